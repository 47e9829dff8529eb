"""The standing session's controls: ``pairpod ctl list | mint | revoke | kick``.

They are the gateway's owner controls (:meth:`SharingService.control`),
served on a Unix socket instead of an SSH login: the person who started
``pairpod pair`` uses them from any terminal of theirs, and the shared shell
has the socket's path in ``PAIRPOD_CONTROL`` (in a container, that person is
inside the shell). The socket is mode 0600, owned by the shell's user, in a
directory only that user may enter: read-only joiners cannot type, so only
people who could already do anything in the shell can use it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pairpod.admin.control import AdminSocket
from pairpod.pair.user import ShellUser
from pairpod.sharing.service import ControlError, SharingService

#: The environment variable naming the control socket (set in the shared shell).
CONTROL_ENV = "PAIRPOD_CONTROL"


class PairControl:
    """The control socket of one standing session, owned by ``user``."""

    def __init__(self, service: SharingService, owner: str, user: ShellUser) -> None:
        self._service = service
        self._owner = owner
        self._user = user
        self._directory = Path(tempfile.mkdtemp(prefix="pairpod-"))
        self.path = self._directory / "control.sock"
        self._socket = AdminSocket(self.path, self._handle)

    async def start(self) -> None:
        """Serve the socket; the shell's user owns it (and its directory)."""
        await self._socket.start()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self._user.name)
            for path in (self._directory, self.path):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    async def stop(self) -> None:
        """Stop serving and remove the socket and its directory."""
        await self._socket.stop()
        shutil.rmtree(self._directory, ignore_errors=True)

    async def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        line = request.get("line")
        if request.get("command") != "control" or not isinstance(line, str):
            return {"error": "bad request"}
        try:
            return {"output": self._service.control(self._owner, line)}
        except ControlError as error:
            return {"error": str(error)}
