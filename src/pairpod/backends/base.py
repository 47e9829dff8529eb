"""The backend interface: Backend -> Environment -> Process.

A Backend turns an authenticated identity into an Environment (a container, a
pod, a local session). An Environment starts Processes. A Process exposes its
byte streams, resize, signal and exit status. The SSH layer speaks only this
interface and never names a backend.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from pairpod.config import Config

# Signal names an SSH client may send (RFC 4254 section 6.10), without "SIG".
SSH_SIGNALS = frozenset(
    {"ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE", "QUIT", "SEGV", "TERM", "USR1", "USR2"}
)


@dataclass(frozen=True)
class Identity:
    """Who a connection belongs to, and the config that applies to it.

    ``config`` is the effective config of this connection: the file's config
    with any per-user or webhook overrides already merged and validated.
    ``env`` holds variables the authentication step attached (webhook
    environment and metadata); they reach every process of the connection.
    ``files`` (absolute path -> content) are written into the environment,
    mode 0600 and owned by the session user, before any process starts.
    """

    username: str
    conn_id: str
    remote_addr: str
    config: Config
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class PtySpec:
    """A pseudo-terminal request: terminal type, size and modes."""

    term: str
    cols: int
    rows: int
    pixel_width: int = 0
    pixel_height: int = 0
    modes: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessSpec:
    """What to run.

    Exactly one of: ``command`` (an exec request, run by the environment's
    shell with ``-c``), ``subsystem`` (e.g. ``sftp``), or neither (an
    interactive login shell). ``env`` is the client's environment after
    filtering; ``pty`` is set when the client asked for a terminal.
    """

    command: str | None = None
    subsystem: str | None = None
    pty: PtySpec | None = None
    env: Mapping[str, str] = field(default_factory=dict)


class Stream(enum.Enum):
    """An output stream of a Process."""

    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: an exit code, or a signal name (``KILL``, ``TERM``...)."""

    code: int | None
    signal: str | None = None
    core_dumped: bool = False

    @property
    def as_exit_code(self) -> int:
        """A shell-style exit code (128 + signal number for a signal)."""
        if self.code is not None:
            return self.code
        import signal as signal_module

        try:
            return 128 + signal_module.Signals[f"SIG{self.signal}"].value
        except KeyError:
            return 255


class Process(ABC):
    """A program running inside an Environment.

    With a PTY, output arrives on STDOUT only and reading STDERR returns
    ``b""`` at once.
    """

    @abstractmethod
    async def read(self, stream: Stream, size: int = 65536) -> bytes:
        """Up to ``size`` bytes of output; ``b""`` at end of stream."""

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Send input; waits while the program is not keeping up."""

    @abstractmethod
    async def write_eof(self) -> None:
        """Close the program's standard input."""

    @abstractmethod
    async def close_output(self) -> None:
        """The client reads no more output (OpenSSH's ``eow@openssh.com``).

        As with OpenSSH's sshd: without a PTY the program's stdout is closed,
        so its next write gets SIGPIPE (or EPIPE); stderr stays open. A
        terminal cannot be closed for output alone: with a PTY its output is
        dropped from then on, and input, resizes and signals still work.
        Reading STDOUT returns ``b""`` afterwards. Idempotent.
        """

    @abstractmethod
    async def resize(self, cols: int, rows: int, pixel_width: int = 0, pixel_height: int = 0) -> None:
        """Change the PTY size (no-op without a PTY)."""

    @abstractmethod
    async def signal(self, name: str) -> None:
        """Deliver a signal (``INT``, ``TERM``, ... as in SSH_SIGNALS)."""

    @abstractmethod
    async def wait(self) -> ExitStatus:
        """Wait for the program to end and return how it ended."""

    @abstractmethod
    async def kill(self) -> None:
        """End the program and everything it started, now. Idempotent."""


class Environment(ABC):
    """The isolated place where one connection's processes run."""

    #: A short description for logs, e.g. a container id.
    description: str = ""
    #: True when it came ready from a warm pool (a warm start), until its first process.
    from_pool: bool = False
    #: Whether all processes see one filesystem (False: a container per process).
    shares_filesystem: bool = True

    @abstractmethod
    async def start(self, spec: ProcessSpec) -> Process:
        """Start a process; raise a BackendError subclass when it cannot run."""

    @abstractmethod
    async def close(self) -> None:
        """End every process and remove the environment. Idempotent."""


StatusCallback = Callable[[str], object]
"""Shows the user one progress line (see ``Backend.open``)."""


class Backend(ABC):
    """Turns identities into Environments, and owns their lifecycle."""

    name: ClassVar[str]

    def __init__(self, config: Config, instance_id: str) -> None:
        self.config = config
        self.instance_id = instance_id

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare the backend (connect, reap orphans, fill pools)."""

    @abstractmethod
    async def open(self, identity: Identity, *, status: StatusCallback | None = None) -> Environment:
        """Create the environment of one connection.

        ``status``, when given, is called with a short line for the user while
        they wait on something slow (an image pull, a pod being scheduled).
        """

    async def check(self) -> None:  # noqa: B027 - a backend with no peer is always ready
        """Raise BackendUnavailable (saying why) unless the backend can make environments now.

        Answers a readiness probe: a cheap call to the engine or API server.
        """

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Remove everything this backend created. Called once at shutdown."""
