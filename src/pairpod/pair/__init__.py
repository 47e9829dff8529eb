"""``pairpod pair``: a standing shared shell on this machine for the people named.

* :mod:`~pairpod.pair.standing`: the shell wrapped in an ownerless shared
  Terminal (what ``pairpod pair`` serves, and host mode shares through a
  gateway); :mod:`~pairpod.pair.shell`: the shell process, respawned when
  asked; :mod:`~pairpod.pair.user`: the OS user it runs as.
"""

from __future__ import annotations

from pairpod.pair.shell import StandingShell, describe_status
from pairpod.pair.standing import Standing
from pairpod.pair.user import ShellUser, prepare_user

__all__ = ["ShellUser", "Standing", "StandingShell", "describe_status", "prepare_user"]
