"""Channel requests OpenSSH sends that AsyncSSH does not hand to a session.

``eow@openssh.com`` ("end of write"): OpenSSH's client sends it when its own
stdout closes (``ssh gw yes | head -1``), so that the server closes the
program's output and the program ends on SIGPIPE instead of running on
unread. AsyncSSH answers unknown channel requests with a refusal and keeps
no callback for them; it looks a request's handler up on the channel object
by name, which is where :func:`on_end_of_write` puts one.

OpenSSH sends these only to servers whose version string starts with
``OpenSSH`` (its compatibility table), hence :data:`SERVER_VERSION`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncssh

from pairpod import __version__

# "OpenSSH" first so that OpenSSH's client takes pairpod for a current OpenSSH
# peer and sends eow@openssh.com; ssh-audit and the like see no version
# number there to match against OpenSSH's advisories.
SERVER_VERSION = f"OpenSSH_compatible pairpod_{__version__}"

# AsyncSSH's handler name for the request (punctuation mapped as it does).
_EOW_HANDLER = "_process_eow_at_openssh_dot_com_request"


def on_end_of_write(chan: asyncssh.SSHServerChannel[Any], callback: Callable[[], None]) -> None:
    """Call ``callback`` when the client sends ``eow@openssh.com`` on ``chan``."""

    def handle(packet: Any) -> bool:
        packet.check_end()
        callback()
        return True

    setattr(chan, _EOW_HANDLER, handle)
