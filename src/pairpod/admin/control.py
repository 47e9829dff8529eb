"""The local admin socket behind ``pairpod admin``: one JSON request, one JSON answer.

The socket file is created mode 0600 (only the gateway's user, and root, may
connect); a stale one left by a crash is replaced, a live one is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pairpod.errors import ConfigError, PairpodError
from pairpod.log import fields, get_logger

log = get_logger("admin")

# A request is a command and a connection id: anything longer is not one.
MAX_REQUEST = 4096
# Ending a connection waits for its environment to be removed.
CLIENT_TIMEOUT = 60.0

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class AdminSocket:
    """Serves ``handler`` on a Unix socket at ``path``."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Create the socket (mode 0600); errors name ``admin.socket``."""
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The umask makes the file 0600 from the start: no moment where others could connect.
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        except OSError as error:
            sock.close()
            raise ConfigError(f"admin.socket: cannot create {self.path}: {error.strerror or error}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST)
        log.info("admin.socket", extra=fields(path=str(self.path)))

    def _remove_stale(self) -> None:
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        except OSError as error:
            raise ConfigError(f"admin.socket: {self.path}: {error.strerror or error}") from None
        if not stat.S_ISSOCK(mode):
            raise ConfigError(f"admin.socket: {self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink(missing_ok=True)  # left by a gateway that is gone
            return
        finally:
            probe.close()
        raise ConfigError(f"admin.socket: {self.path} is in use by another running gateway")

    async def stop(self) -> None:
        """Stop serving and remove the socket file."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await reader.readline()
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except (ValueError, asyncio.LimitOverrunError):
                answer: dict[str, Any] = {"error": "bad request"}
            else:
                try:
                    answer = await self._handler(request)
                except PairpodError as error:
                    answer = {"error": error.user_message}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the asker went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


def ask(path: Path, request: dict[str, Any], timeout: float = CLIENT_TIMEOUT) -> dict[str, Any]:
    """Send one request to a gateway's admin socket and return its answer.

    Raises OSError when nothing answers there, ValueError on a garbled answer.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = json.loads(b"".join(chunks))
    if not isinstance(answer, dict):
        raise ValueError("the gateway's answer is not a JSON object")
    return answer
