"""Host mode, the host's side: ``pairpod pair --via GATEWAY`` shares a shell through a gateway.

For a machine nobody can reach inbound. The shell runs on a PTY here, in a
standing session (:class:`~pairpod.pair.standing.Standing`); this module
keeps **one outbound SSH connection** to a pairpod gateway, logged in as
``LOGIN+host``, and joins the standing Terminal as one read-write
participant on behalf of everyone the gateway admits (frames of
:mod:`pairpod.sharing.hostwire`). The gateway prints nothing of this
machine but that terminal: no exec, no files, no forwarding.

- **Host key**: checked against ``~/.ssh/known_hosts`` as ``ssh`` does. An
  unknown key is refused with its fingerprint, unless
  ``--accept-new-host-key`` (then it is written there); a key that differs
  from the one recorded is refused loudly, always.
- **Drops**: the connection is made again with backoff; the session key
  (chosen here, kept for the life of the process) gets the same session, and
  the same links, back from the gateway within its grace period, even after
  the gateway restarted. Joining the standing Terminal afresh sends the
  gateway the current screen. Past the grace period (judged here, so a
  gateway that restarted meanwhile is no exception) a new session key is
  drawn and the new commands are printed.
- **The end**: when the shell exits or pairpod is stopped, the gateway is
  told why (END) and ends the session for everyone at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import re
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import asyncssh

from pairpod.backends.base import ExitStatus
from pairpod.config import Config
from pairpod.errors import ConfigError
from pairpod.log import fields, get_logger
from pairpod.pair.links import command_line, named_people
from pairpod.pair.standing import Standing
from pairpod.pair.user import ShellUser, prepare_user
from pairpod.sharing.hostwire import (
    HOST_SUFFIX,
    SUBSYSTEM,
    VERSION,
    Frame,
    FrameDecoder,
    Kind,
    ProtocolError,
    Refusal,
    encode_chunks,
    encode_json,
    grace_period,
    minted_links,
    printable,
    revoked_links,
    window_size,
)
from pairpod.sharing.terminal import Participant, Sink, Terminal, TerminalEnded
from pairpod.sharing.tokens import Access

log = get_logger("pair")

#: Reconnection delays: doubled from the first to the last, then kept.
BACKOFF = (0.25, 8.0)
#: Keepalives to the gateway: a dead path is noticed within about a minute.
KEEPALIVE = 15.0
# INPUT frames waiting for the shell before the gateway's channel is no longer read.
_INPUT_QUEUED = 64
# How long the gateway may take to end the channel after END, before we hang up.
_END_WAIT = 2.0


class HostKeyRefused(Exception):
    """The gateway's host key is unknown (without --accept-new-host-key) or changed."""


class GatewayRefused(Exception):
    """The gateway will not host this session (the line says why); retrying will not help."""


@dataclass(frozen=True)
class ViaOptions:
    """What ``pairpod pair --via`` was asked for."""

    host: str
    port: int
    login: str
    share_with: tuple[str, ...] = ()
    key_path: Path | None = None
    accept_new_host_key: bool = False
    known_hosts: Path = Path("~/.ssh/known_hosts")
    respawn: bool = False

    @property
    def address(self) -> str:
        """``host:port`` for people."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_gateway(text: str) -> tuple[str, int]:
    """``gw``, ``gw:2222``, ``[::1]:2222`` -> host and port (22 when not given)."""
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text.strip())
    if match is None:
        raise ConfigError(f"--via: expected HOST or HOST:PORT, got {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4) or 22)
    if not 1 <= port <= 65535:
        raise ConfigError(f"--via: port {port} is not between 1 and 65535")
    return host, port


def via_options(
    gateway: str,
    *,
    login: str | None,
    key_path: Path | None,
    accept_new_host_key: bool,
    github: Sequence[str],
    gitlab: Sequence[str],
    respawn: bool,
    served_here: bool = False,
) -> ViaOptions:
    """Check the command line of host mode; ConfigError says what is wrong."""
    if served_here:
        raise ConfigError(
            "--via: --name, --open and --listen are for a session served here, not via a gateway"
        )
    host, port = parse_gateway(gateway)
    if key_path is not None and not key_path.is_file():
        raise ConfigError(f"-i: no such key file: {key_path}")
    return ViaOptions(
        host,
        port,
        login or getpass.getuser(),
        tuple(sorted(named_people(github, gitlab))),
        key_path,
        accept_new_host_key,
        Path("~/.ssh/known_hosts").expanduser(),
        respawn,
    )


class HostKeyCheck:
    """``ssh``'s StrictHostKeyChecking=yes (or accept-new): known_hosts decides."""

    def __init__(self, options: ViaOptions, out: TextIO) -> None:
        self._options = options
        self._out = out
        self.problem: str | None = None

    def trusted(self) -> list[asyncssh.SSHKey]:
        """The keys ``known_hosts`` records for the gateway."""
        path = self._options.known_hosts
        if not path.exists():
            return []
        try:
            known = asyncssh.read_known_hosts(str(path))
        except (OSError, ValueError) as error:
            raise HostKeyRefused(f"cannot read {path}: {error}") from None
        host, port = self._options.host, self._options.port
        return list(known.match(host, host, port)[0])

    def unknown_key(self, key: asyncssh.SSHKey, recorded: bool) -> bool:
        """A key known_hosts does not list: refuse, or record it when asked to."""
        options = self._options
        fingerprint = key.get_fingerprint()
        if recorded:
            self.problem = (
                f"WARNING: the host key of {options.address} has CHANGED (now {fingerprint}); "
                f"someone may be impersonating the gateway. Refusing to connect. If the gateway's "
                f"key really changed, remove its old line from {options.known_hosts}."
            )
            return False
        if not options.accept_new_host_key:
            self.problem = (
                f"the host key of {options.address} is not known ({fingerprint}); check it and "
                "run again with --accept-new-host-key to trust it"
            )
            return False
        name = f"[{options.host}]:{options.port}" if options.port != 22 else options.host
        line = f"{name} {key.export_public_key().decode().strip()}\n"
        path = options.known_hosts
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with path.open("a") as stream:
                stream.write(line)
        except OSError as error:
            self.problem = f"cannot record the host key of {options.address} in {path}: {error.strerror}"
            return False
        self._out.write(f"pairpod: trusting the new host key of {options.address}: {fingerprint}\n")
        self._out.flush()
        return True


class _Client(asyncssh.SSHClient):
    def __init__(self, check: HostKeyCheck, recorded: bool) -> None:
        self._check = check
        self._recorded = recorded

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        # Called only for a key that known_hosts does not list for this host.
        return self._check.unknown_key(key, self._recorded)


class GatewaySink(Sink):
    """The standing Terminal's participant that stands for the gateway: output as frames."""

    def __init__(self, chan: asyncssh.SSHClientChannel[bytes], terminal: Terminal, status: Callable[[], Any]):
        self._chan = chan
        self._terminal = terminal
        self._status = status

    def write(self, data: bytes) -> None:
        """Output to the gateway (not the farewell: the gateway tells its joiners itself)."""
        if self._terminal.ended:
            return
        with contextlib.suppress(OSError, asyncssh.Error):
            for frame in encode_chunks(Kind.OUTPUT, data):
                self._chan.write(frame)

    def close(self, reason: str) -> None:
        """The session ended here: tell the gateway why, and how the shell ended."""
        status: ExitStatus | None = self._status()
        code = status.as_exit_code if status is not None else None
        with contextlib.suppress(OSError, asyncssh.Error):
            self._chan.write(encode_json(Kind.END, {"reason": reason, "code": code}))
            self._chan.write_eof()


class HostChannelSession(asyncssh.SSHClientSession[bytes]):
    """The host's end of its channel: frames from the gateway to the standing Terminal."""

    def __init__(
        self,
        terminal: Terminal,
        welcome: Callable[[dict[str, Any]], None],
        status: Callable[[], Any],
        revoked: Callable[[dict[str, Any]], None],
    ) -> None:
        self._terminal = terminal
        self.status = status
        self._welcome = welcome
        self._revoked = revoked
        self._decoder = FrameDecoder()
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.participant: Participant | None = None
        self.sink: GatewaySink | None = None
        self._inputs: asyncio.Queue[bytes] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._paused = False
        self.stderr = b""
        self.exit_status: int | None = None
        self.closed = asyncio.Event()

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr = (self.stderr + data)[-4096:]  # one line is expected; keep a bounded tail
            return
        try:
            for frame in self._decoder.feed(data):
                self._frame(frame)
        except ProtocolError as error:
            log.warning("pair.via_protocol_error", extra=fields(error=str(error)))
            if self._chan is not None:
                self._chan.close()
        except TerminalEnded:  # the shell ended as the gateway answered: nothing to share
            if self._chan is not None:
                self._chan.close()

    def _frame(self, frame: Frame) -> None:
        if frame.kind is Kind.WELCOME:
            if self.participant is not None:
                raise ProtocolError("a second WELCOME")
            self._join(frame.json())
        elif self.participant is None:
            raise ProtocolError(f"{frame.kind.name} before WELCOME")
        elif frame.kind is Kind.INPUT:
            self._inputs.put_nowait(frame.payload)
            if self._inputs.qsize() > _INPUT_QUEUED and self._chan is not None and not self._paused:
                self._paused = True
                self._chan.pause_reading()
        elif frame.kind is Kind.RESIZE:
            self.participant.resize(*frame.size())
        elif frame.kind is Kind.REVOKED:
            self._revoked(frame.json())
        else:
            raise ProtocolError(f"unexpected {frame.kind.name}")

    def _join(self, welcome: dict[str, Any]) -> None:
        assert self._chan is not None
        try:
            cols, rows = window_size(welcome)
        except ProtocolError as error:
            raise ProtocolError(f"WELCOME: {error}") from None
        self._welcome(welcome)
        self.sink = GatewaySink(self._chan, self._terminal, self.status)
        # Joining sends the current screen first: after a restart the gateway starts from it.
        self.participant = self._terminal.join(
            self.sink, name="gateway", access=Access.READ_WRITE, cols=cols, rows=rows, notices=False
        )
        self._pump = asyncio.ensure_future(self._pump_input(self.participant))

    async def _pump_input(self, participant: Participant) -> None:
        while True:
            data = await self._inputs.get()
            await participant.send_input(data)
            if self._paused and self._inputs.qsize() <= _INPUT_QUEUED // 2 and self._chan is not None:
                self._paused = False
                self._chan.resume_reading()

    def pause_writing(self) -> None:
        if self.participant is not None:
            self.participant.pause_writing()

    def resume_writing(self) -> None:
        if self.participant is not None:
            self.participant.resume_writing()

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pump is not None:
            self._pump.cancel()
        if self.participant is not None:
            self.participant.leave()
        self.closed.set()


class HostLink:
    """The connection to the gateway, made again whenever it drops, for one standing session."""

    def __init__(self, options: ViaOptions, standing: Standing, user: ShellUser, out: TextIO) -> None:
        self._options = options
        self._standing = standing
        self._user = user
        self._out = out
        # The session's own links its owner revoked, and the links minted on it that
        # still work: the gateway is told again in every HELLO (all of them are derived
        # from the session key, so a restarted gateway makes the same ones again: it must
        # revoke the revoked, and needs the minted ones' labels to make them).
        self._session_key: str
        self._revoked: list[str]
        self._minted: list[str]
        self._next_minted: int
        self._away_since: float | None
        self._new_session()
        self._commands: dict[str, str] | None = None
        self._grace = 0.0
        self._channel: HostChannelSession | None = None
        self._conn: asyncssh.SSHClientConnection | None = None

    def _say(self, text: str) -> None:
        self._out.write(f"pairpod: {text}\n")
        self._out.flush()

    def _keep_links(self, value: dict[str, Any]) -> None:
        self._revoked = sorted({*revoked_links(value), *self._revoked})
        self._minted, self._next_minted = minted_links(value)

    def _welcome(self, welcome: dict[str, Any]) -> None:
        grace = grace_period(welcome)  # checked before anything of the WELCOME is kept
        self._keep_links(welcome)
        commands = welcome.get("commands")
        if not isinstance(commands, dict) or not all(isinstance(c, str) for c in commands.values()):
            raise ProtocolError("WELCOME: no join commands")
        commands = {access: printable(command) for access, command in commands.items()}
        self._grace = grace
        if commands == self._commands:
            self._say(f"reconnected to {self._options.address}; the same links work again")
            return
        self._commands = commands
        self._say(f"sharing through {self._options.address} with {printable(welcome.get('who')) or '?'}")
        self._say(self._user.announcement())
        for access in Access:
            if access.value in commands:
                self._say(command_line(access, commands[access.value]))

    async def _connect(self) -> asyncssh.SSHClientConnection:
        options = self._options
        check = HostKeyCheck(options, self._out)
        trusted = check.trusted()
        # -i KEY: that key alone (as ssh's IdentitiesOnly); else the usual keys and agent.
        keys: dict[str, Any] = {}
        if options.key_path is not None:
            keys = {"client_keys": [str(options.key_path)], "agent_path": None}
        try:
            return await asyncssh.connect(
                options.host,
                options.port,
                username=f"{options.login}{HOST_SUFFIX}",
                known_hosts=(trusted, [], []),
                client_factory=lambda: _Client(check, bool(trusted)),
                password_auth=False,
                kbdint_auth=False,
                keepalive_interval=KEEPALIVE,
                config=[],
                **keys,
            )
        except asyncssh.HostKeyNotVerifiable:
            raise HostKeyRefused(check.problem or "the gateway's host key is not trusted") from None

    async def _serve_once(self) -> float:
        """One connection, until it ends; the time it was up (0: it never got a session)."""
        conn = await self._connect()
        self._conn = conn
        began = time.monotonic()
        try:
            terminal = self._standing.terminal
            channel = HostChannelSession(
                terminal, self._welcome, lambda: self._standing.shell.status, self._keep_links
            )
            self._channel = channel
            chan, _ = await conn.create_session(lambda: channel, subsystem=SUBSYSTEM, encoding=None)
            cols, rows = terminal.size
            hello = encode_json(
                Kind.HELLO,
                {
                    "v": VERSION,
                    "key": self._session_key,
                    "revoked": self._revoked,
                    "minted": self._minted,
                    "next": self._next_minted,
                    "share_with": list(self._options.share_with),
                    "cols": cols,
                    "rows": rows,
                },
            )
            # A refusal may close the channel first: its stderr line says why (read below).
            with contextlib.suppress(OSError, asyncssh.Error):
                chan.write(hello)
            await channel.closed.wait()
            if channel.participant is None:
                # The gateway's words reach this terminal: no control characters in them.
                line = (
                    printable(channel.stderr.decode(errors="replace").strip())
                    or "the gateway closed the channel"
                )
                if channel.exit_status == Refusal.EXPIRED:
                    self._say(f"{line.removeprefix('pairpod: ')}; registering a new session")
                    self._new_session()
                    return 0.0
                raise GatewayRefused(line.removeprefix("pairpod: "))
            return time.monotonic() - began
        finally:
            self._channel = None
            self._conn = None
            conn.close()

    def _expire(self) -> None:
        """Away past the gateway's grace period: its session has ended, so start a new one."""
        self._say(
            f"away from {self._options.address} longer than its grace period ({self._grace:g}s): "
            "the links have expired; new ones follow once it is back"
        )
        self._new_session()

    def _new_session(self) -> None:
        """A new session key, and nothing kept of the old session's links."""
        self._session_key, self._revoked = secrets.token_hex(32), []
        self._minted, self._next_minted = [], 0
        self._away_since = None  # a new session has nothing to come back to

    async def run(self) -> None:
        """Keep the standing session shared until it ends (or a refusal, raised)."""
        delay = BACKOFF[0]
        told = False
        while not self._standing.terminal.ended:
            # Checked before each attempt, not only after a failed one: a gateway that was
            # down past the grace period (a restart) would otherwise be handed the old key
            # and, remembering nothing, bring back links whose session has ended.
            away = self._away_since
            if self._grace and away is not None and time.monotonic() - away > self._grace:
                self._expire()
                delay = BACKOFF[0]  # a new session: registered as eagerly as the first one
            try:
                up = await self._serve_once()
            except asyncssh.PermissionDenied:
                raise GatewayRefused(
                    f"{self._options.address} did not accept {self._options.login}{HOST_SUFFIX}'s key"
                ) from None
            except (OSError, asyncssh.Error) as error:
                log.info(
                    "pair.via_connect_failed", extra=fields(gateway=self._options.address, error=str(error))
                )
                if self._commands is None and not told:
                    told = True
                    self._say(f"cannot reach {self._options.address} ({error}); retrying")
                up = 0.0
            if self._standing.terminal.ended:
                return
            now = time.monotonic()
            if up > 0:  # a session was had: the gateway keeps it for the grace period from now
                delay = BACKOFF[0]
                self._away_since = now
                self._say(f"lost the connection to {self._options.address}; reconnecting")
            await asyncio.sleep(self._pause(delay))
            delay = min(delay * 2, BACKOFF[1])

    def _pause(self, delay: float) -> float:
        """The pause before the next attempt: the backoff, cut short for one last try just
        before the grace period ends (a gateway back in time keeps the same links), and
        for one just after it (the links expired: say so then, and start a new session)."""
        if self._grace and self._away_since is not None:
            ends = self._away_since + self._grace - time.monotonic()
            for wake in (ends - BACKOFF[0], ends + BACKOFF[0]):
                if 0 < wake < delay:
                    return wake
        return delay

    async def close(self) -> None:
        """After the session ended: let the END reach the gateway, then hang up."""
        channel, conn = self._channel, self._conn
        if channel is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(channel.closed.wait(), _END_WAIT)
        if conn is not None:
            conn.close()


async def run_via(
    config: Config,
    options: ViaOptions,
    *,
    out: TextIO = sys.stdout,
    user_factory: Callable[[], ShellUser] = prepare_user,
) -> int:
    """Share a standing shell through the gateway until the shell ends (or SIGTERM/SIGINT)."""
    user = user_factory()
    standing = await Standing.start(config, user, respawn=options.respawn)
    link = HostLink(options, standing, user, out)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, standing.stop)
    shared = asyncio.ensure_future(standing.run())
    linked = asyncio.ensure_future(link.run())
    try:
        await asyncio.wait({shared, linked}, return_when=asyncio.FIRST_COMPLETED)
        if linked.done() and linked.exception() is not None:
            error = linked.exception()
            out.write(f"pairpod: {error}\n")
            out.flush()
            standing.stop(f"pairpod could not share the session: {error}")
            await shared
            return 1
        status = await shared
        await link.close()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        linked.cancel()
        with contextlib.suppress(BaseException):
            await linked
    code = status.as_exit_code if status is not None else 0
    log.info("pair.exit", extra=fields(code=code))
    return code
