"""The start-up wrapper every container process runs through, and its preamble.

Docker and Kubernetes both run every program through the same small POSIX-sh
wrapper (:data:`WRAPPER`) so that neither needs an agent inside the image, only
``/bin/sh``:

- before it ``exec``s the real program, the wrapper sets the terminal's size
  and modes, exports the variables it was given, falls back to ``/bin/sh``
  when the configured shell is missing, finds the image's ``sftp-server``,
  and prints one preamble line with its PID (``pairpod:pid:N``), read back by
  :class:`PreambleReader`;
- the PID is how signals reach the program: neither the Engine API nor the
  Kubernetes exec protocol can signal an exec'd process, so the backend runs a
  second exec, ``kill -s NAME PID``, as the same user;
- :data:`KILL_TREE` ends a program and everything it started, the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pairpod.backends.base import ProcessSpec
from pairpod.backends.termmodes import stty_modes
from pairpod.errors import CommandNotFound, SubsystemUnavailable

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
# preamble on (1: stdout, the stream the program's output follows in order;
# the gateway reads the preamble off it before passing output on), stty size
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
#: The runtime could not enter the container: its process ended while the exec
#: started (``namespace path: lstat /proc/N/ns/ipc: no such file or directory``).
#: The container is going away; no program is missing.
CONTAINER_GONE = re.compile(r"namespace path|/proc/\d+/ns/", re.IGNORECASE)


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
    if MISSING_PROGRAM.search(text) and not CONTAINER_GONE.search(text):
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
    # The preamble goes where the program's output will: the engine keeps one
    # stream in order but may deliver stdout written later ahead of stderr.
    fd = "1"
    # A terminal's output cannot be closed alone; sftp clients never send eow.
    reader = "1" if pty is None and kind != "sftp" and not main else ""
    words = [f"{k}={v}" for k, v in exports.items()]
    return [fd, size, modes, kind, reader, "1" if cd_home else "0", str(len(words)), *words, *argv]


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


# --- the preamble ------------------------------------------------------------

PREAMBLE_PREFIX = b"pairpod:"
# A preamble longer than this is not ours: the wrapper did not run as expected.
_PREAMBLE_MAX = 256


@dataclass(frozen=True)
class Preamble:
    """What the wrapper reported before running the program.

    Exactly one of ``pid`` (the program's PID inside the container, with
    ``reader``, the PID of the process reading its stdout when there is one),
    ``error`` (a short reason, e.g. ``nosftp``) or ``ready`` (a spare process
    waiting for its instructions) is set. ``garbage`` holds the bytes received
    when the line was not a preamble at all (the wrapper itself could not run;
    the engine's or the shell's error text is in it).
    """

    pid: int | None = None
    reader: int | None = None
    error: str | None = None
    garbage: bytes = b""
    ready: bool = False


class PreambleReader:
    """Take the wrapper's first line off the front of a stream.

    Feed it bytes until it returns a :class:`Preamble`; the bytes after the
    line come back with it and belong to the program. With a TTY the line ends
    in ``\\r\\n`` (the terminal's output processing), without one in ``\\n``.
    """

    __slots__ = ("_buffer", "done")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.done = False

    def feed(self, data: bytes) -> tuple[Preamble | None, bytes]:
        """Consume ``data``; return ``(preamble, rest)`` once the line is complete."""
        if self.done:
            return None, data
        self._buffer += data
        newline = self._buffer.find(b"\n")
        if newline < 0:
            if len(self._buffer) > _PREAMBLE_MAX or not PREAMBLE_PREFIX.startswith(
                bytes(self._buffer[: len(PREAMBLE_PREFIX)])
            ):
                return self._finish(Preamble(garbage=bytes(self._buffer)), b"")
            return None, b""
        line = bytes(self._buffer[:newline]).rstrip(b"\r")
        rest = bytes(self._buffer[newline + 1 :])
        return self._finish(parse_preamble(line), rest)

    def feed_eof(self) -> Preamble:
        """The stream ended before a complete line: whatever came is garbage."""
        if self.done:
            raise RuntimeError("preamble already complete")
        return self._finish(Preamble(garbage=bytes(self._buffer)), b"")[0]

    def _finish(self, preamble: Preamble, rest: bytes) -> tuple[Preamble, bytes]:
        self.done = True
        self._buffer = bytearray()
        return preamble, rest


def parse_preamble(line: bytes) -> Preamble:
    """Parse ``pairpod:pid:<n>[:<reader>]``, ``pairpod:error:<reason>`` or ``pairpod:ready``."""
    if line == PREAMBLE_PREFIX + b"ready":
        return Preamble(ready=True)
    if line.startswith(PREAMBLE_PREFIX):
        kind, _, value = line[len(PREAMBLE_PREFIX) :].partition(b":")
        pid, _, reader = value.partition(b":")
        if kind == b"pid" and pid.isdigit() and (not reader or reader.isdigit()):
            return Preamble(pid=int(pid), reader=int(reader) if reader else None)
        if kind == b"error" and value:
            return Preamble(error=value.decode("ascii", "replace"))
    return Preamble(garbage=line)
