"""What the container backends (Docker, Kubernetes) share.

Both run every program through the same small POSIX-sh wrapper
(:data:`WRAPPER`) so that neither needs an agent inside the image, only
``/bin/sh``:

- before it ``exec``s the real program, the wrapper sets the terminal's size
  and modes, exports the variables it was given, falls back to ``/bin/sh``
  when the configured shell is missing, finds the image's ``sftp-server``,
  and prints one preamble line with its PID (``pairpod:pid:N``);
- the PID is how signals reach the program: neither the Engine API nor the
  Kubernetes exec protocol can signal an exec'd process, so the backend runs a
  second exec, ``kill -s NAME PID``, as the same user;
- :data:`KILL_TREE` ends a program and everything it started, the same way.

Also here: label keys, the idle command, terminal modes as ``stty``
arguments, exit codes as SSH exit statuses, the buffered output pipe both
backends feed, and how a process's argv and environment are put together.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal as signal_module
from collections import deque
from collections.abc import Mapping, Sequence

from pairpod.backends.base import SSH_SIGNALS, ExitStatus, Identity, ProcessSpec
from pairpod.backends.docker_stream import Preamble
from pairpod.backends.termmodes import eof_character as eof_character  # re-exported
from pairpod.backends.termmodes import stty_modes as stty_modes  # re-exported
from pairpod.errors import BackendError, CommandNotFound, SubsystemUnavailable

# --- labels ---------------------------------------------------------------------------

# Docker labels and Kubernetes label keys alike (both accept these names).
LABEL_MANAGED = "pairpod.managed"
LABEL_INSTANCE = "pairpod.instance"
LABEL_CONNECTION = "pairpod.connection"
LABEL_USER = "pairpod.user"
LABEL_MODE = "pairpod.mode"
LABEL_POOL = "pairpod.pool"

# --- programs run inside the environment ------------------------------------------------

FALLBACK_SHELL = "/bin/sh"

# PID 1 of a connection's container when ``idle_command`` is null. Needs only
# /bin/sh. Being PID 1 it inherits every orphaned process, and ``wait`` reaps
# any child that ends (the shell waits on all children, not only the sleep),
# so zombies do not pile up. It exits at once on TERM so a stop is quick. An
# image without ``sleep`` falls back to blocking on stdin (kept open by the
# engine), which cannot spin.
DEFAULT_IDLE_COMMAND = [
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT HUP; "
    "if command -v sleep >/dev/null 2>&1; then "
    "while :; do sleep 2147483 & wait $!; done; "
    "else while read -r _; do :; done; fi",
]

# The wrapper every process starts through. Arguments: the fd to print the
# preamble on (2 without a TTY, so stdout stays clean; 1 with one), stty size
# arguments, stty mode arguments, the kind (shell | sftp | plain), whether to
# put a reader on stdout (1 or empty), 1 to start in $HOME (no working
# directory configured), how many NAME=value words follow to export, those
# words, then argv.
#
# Like sshd it gives the program a login environment: USER, LOGNAME, HOME and
# SHELL from the passwd entry of the user it runs as, a PATH if there is
# none, and SSH_TTY with a terminal (SSH_CONNECTION and SSH_CLIENT come from
# the gateway with the client's variables).
#
# With a reader, the program's stdout is a FIFO read by a ``cat`` of ours
# (when the image has mkfifo, cat and a writable temporary directory; mkfifo
# never reuses an existing name, and /tmp is sticky), whose
# PID follows the program's in the preamble (``pairpod:pid:N:READER``): the
# engine's end of the output is out of reach, so ending that reader is how
# the program's stdout is closed when the client stops reading
# (``eow@openssh.com``) and its next write gets SIGPIPE, as under sshd. Only
# where the program is not the container's main process: when that one
# exits, everything else in the container is killed, the reader with
# whatever output it had not passed on yet.
#
# A *spare* (``spare TOKEN tty|pipe FD``) is started ahead of need in a warm
# pool container: it says ``ready``, then reads those same arguments from its
# stdin, shell-quoted, up to a line holding TOKEN. A TTY spare reads in raw
# mode, so its instructions are neither echoed nor edited by the terminal.
WRAPPER = r"""set -f
if [ "$1" = spare ]; then
  end=$2 saved=
  if [ "$3" = tty ]; then
    saved=$(stty -g 2>/dev/null) && stty raw -echo 2>/dev/null ||
      { echo "pairpod:error:nostty" >&"$4"; exit 127; }
  fi
  echo "pairpod:ready" >&"$4"
  s= got=
  while IFS= read -r l; do
    if [ "$l" = "$end" ]; then got=1; break; fi
    s="$s$l
"
  done
  [ -n "$got" ] || exit 0
  [ -z "$saved" ] || stty "$saved"
  eval "set -- $s"
fi
fd=$1 size=$2 modes=$3 kind=$4 reader=$5 home=$6 n=$7
shift 7
uid=$(id -u 2>/dev/null) && while IFS=: read -r pn _ pu _ _ ph ps; do
  if [ "$pu" = "$uid" ]; then
    export USER="$pn" LOGNAME="$pn" HOME="$ph" SHELL="${ps:-/bin/sh}"
    break
  fi
done 2>/dev/null </etc/passwd
[ -n "$PATH" ] || export PATH=/usr/local/bin:/usr/bin:/bin
while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n - 1)); done
[ "$home" != 1 ] || [ -z "$HOME" ] || cd "$HOME" 2>/dev/null || :
[ "$fd" != 1 ] || ! SSH_TTY=$(tty 2>/dev/null) || export SSH_TTY
if [ -n "$size" ] && command -v stty >/dev/null 2>&1; then
  stty $size 2>/dev/null
  if [ -n "$modes" ] && ! stty $modes 2>/dev/null; then
    # One mode this stty lacks fails the whole call: apply them one line at a time.
    rest="$modes
"
    while [ -n "$rest" ]; do stty ${rest%%"
"*} 2>/dev/null; rest=${rest#*"
"}; done
  fi
fi
case $kind in
shell) command -v "$1" >/dev/null 2>&1 || { shift; set -- /bin/sh "$@"; } ;;
sftp)
  s=
  for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server \
      /usr/lib/ssh/sftp-server /usr/libexec/sftp-server /usr/lib/sftp-server \
      /usr/local/libexec/sftp-server; do
    if [ -x "$p" ]; then s=$p; break; fi
  done
  if [ -z "$s" ]; then echo "pairpod:error:nosftp" >&"$fd"; exit 127; fi
  set -- "$s" ;;
esac
r=
if [ -n "$reader" ] && command -v mkfifo >/dev/null 2>&1 && command -v cat >/dev/null 2>&1; then
  o=${TMPDIR:-/tmp}/.pairpod-out.$$
  if mkfifo -m 600 "$o" 2>/dev/null; then
    cat "$o" & r=$!
    exec 3>"$o"
    rm -f "$o"
  fi
fi
echo "pairpod:pid:$$${r:+:$r}" >&"$fd"
[ -z "$r" ] || exec "$@" >&3 3>&-
exec "$@"
"""

# Ends a process and its descendants: freeze the root, collect descendants from
# /proc (freezing each so none can fork away), then kill them all. Needs only sh.
KILL_TREE = r"""p=$1
kill -s STOP "$p" 2>/dev/null
pids=" $p "
changed=1
while [ "$changed" = 1 ]; do
  changed=0
  for s in /proc/[0-9]*/stat; do
    { read -r l < "$s"; } 2>/dev/null || continue
    q=${s#/proc/}; q=${q%/stat}
    set -- ${l##*) }
    case $pids in *" $q "*) continue ;; esac
    case $pids in *" $2 "*) pids="$pids$q "; kill -s STOP "$q" 2>/dev/null; changed=1 ;; esac
  done
done
kill -s KILL $pids 2>/dev/null
exit 0
"""

# The engine's, the kubelet's or the shell's words for "no such program".
MISSING_PROGRAM = re.compile(r"no such file or directory|executable file not found|not found", re.IGNORECASE)


def wrapper_failure(preamble: Preamble, output: bytes, image: str) -> str:
    """Make sense of a wrapper that reported no PID.

    Raises SubsystemUnavailable (no sftp-server) or CommandNotFound (no
    ``/bin/sh``, so nothing can run); otherwise returns the text that came
    instead of the preamble, for the caller's error about the environment
    itself (most likely it is going away).
    """
    if preamble.error == "nosftp":
        raise SubsystemUnavailable(
            f"no sftp-server in image {image}",
            user_message="sftp is not available: no sftp-server in this environment",
        )
    text = (preamble.garbage + output).decode(errors="replace").strip()
    if MISSING_PROGRAM.search(text):
        raise CommandNotFound(
            f"cannot start a process in image {image} (it needs {FALLBACK_SHELL}): {text}",
            user_message="cannot start a process in this environment",
        )
    return text


def signal_command(name: str, pid: int) -> list[str]:
    """The argv of a helper that delivers signal ``name`` to ``pid``."""
    return [FALLBACK_SHELL, "-c", f'kill -s {name} "$1"', "kill", str(pid)]


def kill_tree_command(pid: int) -> list[str]:
    """The argv of a helper that kills ``pid`` and all its descendants."""
    return [FALLBACK_SHELL, "-c", KILL_TREE, "kill-tree", str(pid)]


# --- terminal modes -------------------------------------------------------------------

# One table for every backend, in .termmodes; imported above for the container backends.

# --- exit statuses ----------------------------------------------------------------------


def exit_status(code: int) -> ExitStatus:
    """How a process in a container ended, from its shell-style exit code.

    Engines and kubelets report a program killed by a signal as 128 + the
    signal number, indistinguishable from ``exit 130``; like a shell, take it
    as the signal when it names one an SSH client understands.
    """
    if code > 128:
        with contextlib.suppress(ValueError):
            name = signal_module.Signals(code - 128).name.removeprefix("SIG")
            if name in SSH_SIGNALS:
                return ExitStatus(code=None, signal=name)
    return ExitStatus(code=code)


# --- names ------------------------------------------------------------------------------


def name_part(text: str, limit: int = 40) -> str:
    """``text`` reduced to characters valid in container and pod names."""
    cleaned = re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.")
    return cleaned[:limit] or "x"


def hostname_for(template: str, username: str, setting: str = "hostname") -> str:
    """A hostname: the template filled in, made a valid host label.

    ``setting`` names the config key in the error for a bad template.
    """
    try:
        text = template.format(username=username)
    except (KeyError, IndexError, ValueError) as error:
        raise BackendError(f"{setting}: bad template {template!r}: {error}") from None
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    return label or "pairpod"


# --- argv and environment of a process ----------------------------------------------------


def argv_and_kind(shell: Sequence[str], spec: ProcessSpec) -> tuple[list[str], str]:
    """The program to run for ``spec`` and the wrapper's kind for it."""
    if spec.subsystem is not None:
        if spec.subsystem != "sftp":
            raise SubsystemUnavailable(f"unknown subsystem {spec.subsystem!r}")
        return [], "sftp"
    if spec.command is not None:
        return [shell[0], "-c", spec.command], "shell"
    return list(shell), "shell"


# What the wrapper sets from the passwd entry unless given explicitly (config, login, client).
LOGIN_VARIABLES = frozenset({"USER", "LOGNAME", "HOME", "SHELL"})

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def exportable(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Split variables into those a shell can export and the names it cannot."""
    exports = {k: v for k, v in env.items() if ENV_NAME.fullmatch(k)}
    skipped = sorted(set(env) - set(exports))
    return exports, skipped


def wrapper_args(
    shell: Sequence[str],
    spec: ProcessSpec,
    exports: Mapping[str, str],
    *,
    main: bool = False,
    cd_home: bool = True,
) -> list[str]:
    """The wrapper's arguments (after ``$0``) for ``spec``, exporting ``exports``.

    ``main``: the program will be its container's main process, so its stdout
    gets no reader of ours (see :data:`WRAPPER`). ``cd_home``: start in the
    user's home directory (when no working directory is configured), as sshd
    does.
    """
    argv, kind = argv_and_kind(shell, spec)
    pty = spec.pty
    size = f"rows {pty.rows} cols {pty.cols}" if pty is not None else ""
    modes = stty_modes(pty.modes) if pty is not None else ""
    fd = "1" if pty is not None else "2"
    # A terminal's output cannot be closed alone; sftp clients never send eow.
    reader = "1" if pty is None and kind != "sftp" and not main else ""
    words = [f"{k}={v}" for k, v in exports.items()]
    return [fd, size, modes, kind, reader, "1" if cd_home else "0", str(len(words)), *words,
            *argv]


def wrapped_command(
    shell: Sequence[str],
    spec: ProcessSpec,
    exports: Mapping[str, str] | None = None,
    *,
    main: bool = False,
    cd_home: bool = True,
) -> list[str]:
    """The argv that runs ``spec`` through :data:`WRAPPER`.

    ``exports`` are set by the wrapper itself, for exec APIs that cannot pass
    an environment (Kubernetes); names must be valid shell names. ``main``
    as for :func:`wrapper_args`.
    """
    args = wrapper_args(shell, spec, exports or {}, main=main, cd_home=cd_home)
    return [FALLBACK_SHELL, "-c", WRAPPER, "pairpod", *args]


def sh_quote(word: str) -> str:
    """``word`` quoted for a POSIX shell."""
    return "'" + word.replace("'", "'\\''") + "'"


def process_env(base: Mapping[str, str], identity: Identity, spec: ProcessSpec) -> dict[str, str]:
    """Variables for one process: config, then identity, then the client's."""
    env = {**base, **identity.env, **spec.env}
    if spec.pty is not None:
        env.setdefault("TERM", spec.pty.term or "dumb")
    return env


# --- buffered output ------------------------------------------------------------------


class OutputPipe:
    """One output stream between the engine (or API server) and its reader."""

    __slots__ = ("chunks", "eof", "offset", "size", "waiter")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.offset = 0  # how much of chunks[0] was already read
        self.size = 0
        self.eof = False
        self.waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def feed(self, data: bytes) -> None:
        """Buffer output for the reader."""
        if data and not self.eof:
            self.chunks.append(data)
            self.size += len(data)
            self._wake()

    def end(self) -> None:
        """No more output will come."""
        self.eof = True
        self._wake()

    def close(self) -> None:
        """The reader wants no more: drop what is buffered, end, ignore what follows."""
        self.drain()
        self.end()

    async def read(self, size: int) -> bytes:
        """Up to ``size`` buffered bytes; waits for some; ``b""`` at the end."""
        while not self.chunks:
            if self.eof:
                return b""
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        chunk = self.chunks[0]
        start = self.offset
        if len(chunk) - start <= size:
            self.chunks.popleft()
            self.offset = 0
            data = chunk[start:] if start else chunk
            if self.chunks and len(data) + len(self.chunks[0]) <= size:
                # Several small chunks waiting: one larger read costs one copy
                # here but saves a relay round (and its packets) per chunk.
                parts = [data]
                total = len(data)
                while self.chunks and total + len(self.chunks[0]) <= size:
                    part = self.chunks.popleft()
                    parts.append(part)
                    total += len(part)
                data = b"".join(parts)
        else:
            # Slice without copying the rest: big chunks are read in pieces.
            self.offset = start + size
            data = bytes(memoryview(chunk)[start : start + size])
        self.size -= len(data)
        return data

    def drain(self) -> bytes:
        """Everything buffered, at once (for error messages)."""
        data = b"".join(self.chunks)[self.offset :]
        self.chunks.clear()
        self.offset = 0
        self.size = 0
        return data
