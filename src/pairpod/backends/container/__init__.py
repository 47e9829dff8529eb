"""What the container backends (Docker, Kubernetes) share.

:mod:`.wrapper` is the start-up wrapper every process runs through and the
preamble it prints; :mod:`.names` the labels and names of what they create;
:mod:`.backend` reaping, the warm pool's loop and shutdown; :mod:`.environment`
the environment base (process tracking, the start-up check); :mod:`.process`
the process base (output, signals, kills, exit statuses).
"""
