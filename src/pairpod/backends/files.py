"""Files a login brings (a webhook's ``files``), placed in its environment before any process.

Each file is written by a short shell command started in the environment
like any other process, so it runs as the session user on every backend:
the file belongs to that user, is created with mode 0600 (and set to it if
it was there already), and its directory is made when missing. Content goes
through the process's standard input, so neither its size nor its bytes
meet a command line. A file that cannot be written fails the login's
environment with one line for the user and the reason in the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from pairpod.backends.base import Environment, Process, ProcessSpec, Stream
from pairpod.errors import BackendError

#: Writes stdin to $PAIRPOD_FILE, mode 0600, making its directory (0700) if needed.
WRITE_FILE = (
    'umask 077; f=$PAIRPOD_FILE; d=${f%/*}; { [ -z "$d" ] || mkdir -p -- "$d"; } '
    '&& cat > "$f" && chmod 600 -- "$f"'
)
#: How long writing one file may take (it is a few kilobytes in practice).
FILE_TIMEOUT = 30.0
_USER_MESSAGE = "cannot place the login's files in the environment"


async def _drain(process: Process, stream: Stream) -> bytes:
    """All of one output stream (kept to a few kilobytes: only for the error message)."""
    kept = b""
    while chunk := await process.read(stream):
        kept = (kept + chunk)[-2048:]
    return kept


async def place_files(environment: Environment, files: Mapping[str, bytes]) -> None:
    """Write ``files`` (absolute path -> content) into ``environment`` as its session user."""
    if not files:
        return
    if not environment.shares_filesystem:
        raise BackendError(
            f"{len(files)} file(s) from the login cannot be placed: each process of "
            f"{environment.description} has a filesystem of its own (mode: session)",
            user_message=_USER_MESSAGE,
        )
    for path, content in files.items():
        process = await environment.start(ProcessSpec(command=WRITE_FILE, env={"PAIRPOD_FILE": path}))
        output = asyncio.gather(_drain(process, Stream.STDOUT), _drain(process, Stream.STDERR))
        try:
            async with asyncio.timeout(FILE_TIMEOUT):
                await process.write(content)
                await process.write_eof()
                _, errors = await output
                status = await process.wait()
        except TimeoutError:
            output.cancel()
            await process.kill()
            raise BackendError(
                f"writing {path} took over {FILE_TIMEOUT:g}s", user_message=_USER_MESSAGE
            ) from None
        except BaseException:
            output.cancel()
            await process.kill()
            raise
        if status.code != 0:
            reason = errors.decode(errors="replace").strip() or f"exit status {status.as_exit_code}"
            raise BackendError(f"cannot write {path}: {reason}", user_message=_USER_MESSAGE)
