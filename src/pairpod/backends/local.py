"""The local backend: processes on the gateway's own machine (for development).

Each process gets its own session and process group, so ending it ends what it
started (unless a program deliberately leaves its session, which only a
container backend can contain).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import fcntl
import functools
import os
import pwd
import signal
import struct
import termios
from collections.abc import Mapping

from pairpod.backends.base import (
    Backend,
    Environment,
    ExitStatus,
    Identity,
    Process,
    ProcessSpec,
    StatusCallback,
    Stream,
)
from pairpod.backends.fdwriter import FdWriter
from pairpod.backends.output import FlowControl, OutputPipe
from pairpod.backends.termmodes import apply_modes
from pairpod.config import LocalSettings
from pairpod.errors import BackendError, CommandNotFound, SubsystemUnavailable
from pairpod.log import fields, get_logger

log = get_logger("backend.local")

SFTP_SERVER_PATHS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/sftp-server",
)
FALLBACK_SHELL = "/bin/sh"
# How long a hung-up process group may take to exit before it is killed.
_HANGUP_GRACE = 2.0
_PIPE_SIZE = 1 << 20
# One read's most (as asyncio's own transports read).
_READ_SIZE = 256 * 1024


def find_sftp_server() -> str | None:
    """The system's sftp-server binary, if any."""
    return next((p for p in SFTP_SERVER_PATHS if os.access(p, os.X_OK)), None)


def set_winsize(fd: int, rows: int, cols: int, xpixel: int = 0, ypixel: int = 0) -> None:
    """Set a terminal's window size (the kernel then sends SIGWINCH to its foreground group)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, xpixel, ypixel))


def _grow_pipe(fd: int) -> None:
    # Bigger pipes mean fewer wake-ups per megabyte relayed (Linux only, best effort).
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


def _take_controlling_tty(slave_path: str) -> None:  # pragma: no cover - runs in the child
    # Works wherever the loop runs this: asyncio runs it after start_new_session's
    # setsid() with the PTY already on stdin; uvloop runs it first thing after
    # fork, before its own setsid() (which then fails harmlessly) and before
    # stdio is set up, so this opens the terminal by name rather than using fd 0.
    with contextlib.suppress(PermissionError):  # already a session leader
        os.setsid()
    fd = os.open(slave_path, os.O_RDWR)
    try:
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
    finally:
        os.close(fd)


class LocalBackend(Backend):
    """Runs each connection's processes as local child processes."""

    name = "local"

    async def open(self, identity: Identity, *, status: StatusCallback | None = None) -> Environment:
        """Resolve the OS user and shell for this connection (nothing slow to report)."""
        return LocalEnvironment(identity.config.local, identity)


class LocalEnvironment(Environment):
    """One connection's set of local processes."""

    def __init__(self, settings: LocalSettings, identity: Identity) -> None:
        self._settings = settings
        self._identity = identity
        self._processes: set[LocalProcess] = set()
        self._closed = False
        try:
            self._user = pwd.getpwnam(settings.user) if settings.user else pwd.getpwuid(os.getuid())
        except KeyError:
            raise BackendError(f"local.user: no such OS user {settings.user!r}") from None
        self._switch_user = self._user.pw_uid != os.getuid()
        if self._switch_user and os.geteuid() != 0:
            raise BackendError(
                f"local.user: running as {self._user.pw_name!r} needs the gateway to run as root"
            )
        self.description = f"local user={self._user.pw_name}"

    def _shell(self) -> list[str]:
        shell = list(self._settings.shell)
        if not os.access(shell[0], os.X_OK):
            log.warning(
                "local.shell_fallback",
                extra=fields(conn=self._identity.conn_id, missing=shell[0], using=FALLBACK_SHELL),
            )
            return [FALLBACK_SHELL, "-l"]
        return shell

    def _argv(self, spec: ProcessSpec) -> list[str]:
        if spec.subsystem is not None:
            if spec.subsystem != "sftp":
                raise SubsystemUnavailable(f"unknown subsystem {spec.subsystem!r}")
            server = find_sftp_server()
            if server is None:
                raise SubsystemUnavailable(
                    "no sftp-server found on this machine (install openssh-sftp-server)",
                    user_message="sftp is not available: no sftp-server in this environment",
                )
            return [server]
        shell = self._shell()
        if spec.command is not None:
            return [shell[0], "-c", spec.command]
        return shell

    def _env(self, spec: ProcessSpec) -> dict[str, str]:
        user = self._user
        path = "/usr/local/bin:/usr/bin:/bin"
        if user.pw_uid == 0:
            path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        # Start from a clean slate: the gateway's own environment may hold secrets.
        # The login variables come from the user's passwd entry, as sshd sets them.
        env = {
            "HOME": user.pw_dir,
            "USER": user.pw_name,
            "LOGNAME": user.pw_name,
            "SHELL": user.pw_shell or FALLBACK_SHELL,
            "PATH": path,
        }
        env.update(self._settings.env)
        env.update(self._identity.env)
        env.update(spec.env)
        if spec.pty is not None:
            env["TERM"] = spec.pty.term or "dumb"
        return env

    async def start(self, spec: ProcessSpec) -> Process:
        """Start a process as a child in its own session."""
        if self._closed:
            raise BackendError("environment is closed")
        argv = self._argv(spec)
        cwd = str(self._settings.workdir or self._user.pw_dir)
        if not os.path.isdir(cwd):  # noqa: ASYNC240 - one stat, no I/O wait worth a thread
            cwd = "/"
        kwargs: dict[str, object] = {
            "env": self._env(spec),
            "cwd": cwd,
            "start_new_session": True,
        }
        if self._switch_user:
            kwargs.update(
                user=self._user.pw_uid,
                group=self._user.pw_gid,
                extra_groups=os.getgrouplist(self._user.pw_name, self._user.pw_gid),
            )
        try:
            if spec.pty is not None:
                process: LocalProcess = await _spawn_with_pty(argv, spec, kwargs)
            else:
                process = await _spawn_with_pipes(argv, kwargs)
        except FileNotFoundError:
            raise CommandNotFound(f"cannot run {argv[0]}: not found") from None
        except PermissionError:
            raise CommandNotFound(
                f"cannot run {argv[0]}: permission denied", user_message="permission denied"
            ) from None
        self._processes.add(process)
        process.on_exit(self._processes.discard)
        return process

    async def close(self) -> None:
        """Hang up and end every process of the connection."""
        self._closed = True
        await asyncio.gather(*(p.kill() for p in list(self._processes)))


class _Reading(enum.Enum):
    """Where an :class:`OutputReader`'s descriptor is."""

    WATCHED = "watched"  # the loop calls back when there is output
    PAUSED = "paused"  # too much waits for the channel: the program is held back
    CLOSED = "closed"  # end of output (or a read error, or closed early); the descriptor is closed


class OutputReader:
    """A program's output pipe (or PTY master), read into an :class:`OutputPipe`.

    The reader owns its descriptor and reads it with the loop's ``add_reader``
    (asyncio and uvloop both offer it), not with a read-pipe transport:
    uvloop's closes its descriptor twice (see fdwriter). Reads are handed out
    as the chunks the kernel gave, without the copies a StreamReader's buffer
    makes (two per chunk: about a tenth of the gateway's CPU on a bulk
    download). Reading pauses while the pipe's :class:`FlowControl` says too
    much waits for the channel, so a slow client holds back the program, not
    the gateway's memory. Any end of the descriptor, EIO from a PTY whose last
    slave closed included, is the end of the output: what was read before it
    is still handed out.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self.flow = FlowControl(self._pause, self._resume)
        self.pipe = OutputPipe(self.flow)
        self._state = _Reading.WATCHED
        self._loop.add_reader(fd, self._read_ready)

    def _pause(self) -> None:
        if self._state is _Reading.WATCHED:
            self._loop.remove_reader(self._fd)
            self._state = _Reading.PAUSED

    def _resume(self) -> None:
        if self._state is _Reading.PAUSED:
            self._loop.add_reader(self._fd, self._read_ready)
            self._state = _Reading.WATCHED

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                log.warning("local.output_read_failed", extra=fields(error=str(exc)))
            data = b""
        if data:
            self.pipe.feed(data)  # may pause reading
        else:
            # Nothing reads a descriptor after its end (a PTY's input and size go
            # through the writer's own descriptor): it is closed now, whether or
            # not the process is ever killed.
            self.close()

    def close(self) -> None:
        """Stop reading and close the descriptor (what is buffered stays readable)."""
        if self._state is _Reading.CLOSED:
            return
        if self._state is _Reading.WATCHED:
            self._loop.remove_reader(self._fd)
        self._state = _Reading.CLOSED
        os.close(self._fd)
        self.pipe.end()

    def discard(self, *, close: bool) -> None:
        """Drop what is buffered and all that follows (reading resumes, to drop it too);
        ``close`` the descriptor as well."""
        self.pipe.close()
        if close:
            self.close()

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; ``b""`` at the end of the output."""
        return await self.pipe.read(size)


async def _spawn_with_pipes(argv: list[str], kwargs: Mapping[str, object]) -> LocalProcess:
    # Pipes of our own on all three: the read ends get OutputReaders (not
    # StreamReaders), and stdin is a pipe on every event loop, as sshd makes it.
    # (uvloop makes stdin=PIPE a socket pair, and bash reads ~/.bashrc when its
    # stdin is a socket, as if run by rshd: every command paid for the profile.)
    made: list[int] = []  # every end, closed here if anything fails (EMFILE included)
    try:
        for _ in range(3):
            made.extend(os.pipe())
        stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w = made
        for fd in (stdin_w, stdout_r, stderr_r):
            _grow_pipe(fd)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin_r,
            stdout=stdout_w,
            stderr=stderr_w,
            **kwargs,  # type: ignore[arg-type]
        )
    except BaseException:
        for fd in made:
            os.close(fd)
        raise
    # The child has its copies; the program's exit must be the pipes' end.
    for fd in (stdin_r, stdout_w, stderr_w):
        os.close(fd)
    return LocalProcess(proc, OutputReader(stdout_r), OutputReader(stderr_r), FdWriter(stdin_w), pty_fd=None)


async def _spawn_with_pty(argv: list[str], spec: ProcessSpec, kwargs: Mapping[str, object]) -> LocalProcess:
    assert spec.pty is not None
    master, slave = os.openpty()
    writer_fd = -1
    try:
        # A second descriptor for writing, written directly (see fdwriter): one
        # owner per fd. Made before the spawn, so failing to make it ends nothing.
        writer_fd = os.dup(master)
        set_winsize(slave, spec.pty.rows, spec.pty.cols, spec.pty.pixel_width, spec.pty.pixel_height)
        apply_modes(slave, spec.pty.modes)
        slave_path = os.ttyname(slave)
        uid = kwargs.get("user")
        if isinstance(uid, int) and uid != os.geteuid():
            # The user's own terminal, as sshd makes it: the child opens it by name
            # after it has taken the user's identity (see _take_controlling_tty).
            os.fchown(slave, uid, -1)
            os.fchmod(slave, 0o620)
        env = {**kwargs["env"], "SSH_TTY": slave_path}  # type: ignore[dict-item]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            preexec_fn=functools.partial(_take_controlling_tty, slave_path),
            **{**kwargs, "env": env},  # type: ignore[arg-type]
        )
    except BaseException:
        os.close(master)
        if writer_fd >= 0:
            os.close(writer_fd)
        raise
    finally:
        os.close(slave)
    writer = FdWriter(writer_fd)
    return LocalProcess(proc, OutputReader(master), None, writer, pty_fd=writer.fd)


class LocalProcess(Process):
    """A local child process, with pipes or with a PTY."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        stdout: OutputReader,
        stderr: OutputReader | None,
        stdin: FdWriter,
        pty_fd: int | None,
    ) -> None:
        self._proc = proc
        self._stdout = stdout
        self._stderr = stderr
        self._stdin = stdin
        self._pty_fd = pty_fd
        self._exit_callbacks: list[object] = []
        self._status: ExitStatus | None = None
        self._wait_task = asyncio.ensure_future(self._wait_for_exit())

    def on_exit(self, callback: object) -> None:
        """Call ``callback(self)`` once the process has exited."""
        self._exit_callbacks.append(callback)

    async def _wait_for_exit(self) -> ExitStatus:
        returncode = await self._proc.wait()
        if returncode >= 0:
            self._status = ExitStatus(code=returncode)
        else:
            self._status = ExitStatus(code=None, signal=signal.Signals(-returncode).name[3:])
        for callback in self._exit_callbacks:
            callback(self)  # type: ignore[operator]
        return self._status

    async def read(self, stream: Stream, size: int = 65536) -> bytes:
        """Up to ``size`` bytes of output; ``b""`` at its end (at once for STDERR with a PTY)."""
        reader = self._stdout if stream is Stream.STDOUT else self._stderr
        if reader is None:
            return b""
        return await reader.read(size)

    async def write(self, data: bytes) -> None:
        """Write to stdin; a program that already exited just loses the input."""
        if self._stdin.is_closing():
            return
        self._stdin.write(data)
        await self._stdin.drain()  # a failed write closed the writer: nothing to raise

    async def write_eof(self) -> None:
        """Close stdin; with a PTY, send the terminal's EOF character instead."""
        if self._pty_fd is not None:
            with contextlib.suppress(OSError):
                eof_char = termios.tcgetattr(self._pty_fd)[6][termios.VEOF]
                await self.write(eof_char if isinstance(eof_char, bytes) else bytes([eof_char]))
            return
        self._stdin.finish()

    async def close_output(self) -> None:
        """Close our (the only) read end of stdout: the program's next write gets SIGPIPE.

        A PTY's master stays open (input still goes through it): its output is dropped.
        """
        self._stdout.discard(close=self._pty_fd is None)

    async def resize(self, cols: int, rows: int, pixel_width: int = 0, pixel_height: int = 0) -> None:
        """Resize the PTY; the foreground program gets SIGWINCH."""
        if self._pty_fd is not None and self._status is None:
            with contextlib.suppress(OSError):
                set_winsize(self._pty_fd, rows, cols, pixel_width, pixel_height)

    async def signal(self, name: str) -> None:
        """Send a signal to the process."""
        if self._status is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.Signals[f"SIG{name}"])

    async def wait(self) -> ExitStatus:
        """Wait for exit."""
        return await asyncio.shield(self._wait_task)

    async def kill(self) -> None:
        """Hang up the process group, then kill it if it lingers."""
        pgid = self._proc.pid  # start_new_session made it the group leader
        try:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGHUP)
                os.killpg(pgid, signal.SIGCONT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._wait_task), _HANGUP_GRACE)
            # Children of the group may outlive the leader; end them too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            await asyncio.shield(self._wait_task)
        finally:
            # Closed even when the kill is cancelled (a bounded shutdown): the
            # descriptors are the gateway's, whatever became of the program.
            self._stdin.close()
            # A program that left its session may still hold the output open.
            for reader in (self._stdout, self._stderr):
                if reader is not None:
                    reader.close()
