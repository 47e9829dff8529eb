"""The SSH layer: the listener, connections, and the channels they open.

* :mod:`~pairpod.ssh.gateway`: the running gateway (composition root, listener).
* :mod:`~pairpod.ssh.connection`: one client connection; :mod:`~pairpod.ssh.purpose`
  and :mod:`~pairpod.ssh.kinds`: what it is for (login, join, control).
* :mod:`~pairpod.ssh.session`: a session channel; :mod:`~pairpod.ssh.relay`: the
  seam between it and what it drives.
* :mod:`~pairpod.ssh.joiner`, :mod:`~pairpod.ssh.control`: joiners' and the
  owner's control channels.
* :mod:`~pairpod.ssh.transport`, :mod:`~pairpod.ssh.requests`: AsyncSSH tuning.
"""

from __future__ import annotations

from pairpod.ssh.admission import raise_open_files_limit
from pairpod.ssh.connection import Connection
from pairpod.ssh.context import ChannelContext, SessionContext
from pairpod.ssh.gateway import Gateway
from pairpod.ssh.purpose import Purpose
from pairpod.ssh.relay import DirectRelay, Relay
from pairpod.ssh.session import ChannelSession

__all__ = [
    "ChannelContext",
    "ChannelSession",
    "Connection",
    "DirectRelay",
    "Gateway",
    "Purpose",
    "Relay",
    "SessionContext",
    "raise_open_files_limit",
]
