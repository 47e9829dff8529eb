"""authorized_keys: parsing line by line, options, and the static key sources.

pairpod matches public keys itself (in ``validate_public_key``) rather than
handing AsyncSSH an authorized_keys object, because keys also come from
remote sources and webhooks fetched on demand, and because the chain must
know which source vouched for a key. The price is that pairpod, not
AsyncSSH, applies the options; they end up in a :class:`LoginPermissions`.

Options follow sshd(8) "AUTHORIZED_KEYS FILE FORMAT". An option pairpod
cannot honour makes the line unusable (skipped with a log line), so a
restriction is never silently dropped.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncssh

from pairpod.auth.addresses import check_pattern, match_from
from pairpod.auth.file_modes import authorized_keys_problem
from pairpod.auth.result import LoginPermissions, frozen_map, is_env_name
from pairpod.config import AuthSettings
from pairpod.log import fields, get_logger

log = get_logger("auth.keys")

#: Key types accepted in authorized_keys lines (certificates are not keys here).
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-ed448",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)

# Longer than any real key line (a 16384-bit RSA key is about 2.8 kB).
MAX_LINE = 16384

_PERMISSION_FLAGS = {
    "pty": "pty",
    "port-forwarding": "port_forwarding",
    "agent-forwarding": "agent_forwarding",
    "x11-forwarding": "x11_forwarding",
    "user-rc": "user_rc",
}
_VALUE_OPTIONS = frozenset(
    {"command", "environment", "from", "expiry-time", "permitopen", "permitlisten", "tunnel"}
)
_FLAG_OPTIONS = frozenset(
    {"restrict", "no-touch-required", *_PERMISSION_FLAGS, *(f"no-{f}" for f in _PERMISSION_FLAGS)}
)
_UNSUPPORTED = {
    "cert-authority": "cert-authority lines are not supported; list CAs in auth.trusted_user_ca_keys",
    "principals": "principals= is only meaningful with cert-authority",
    "verify-required": "verify-required cannot be enforced",
}


class KeyParseError(ValueError):
    """A line is not a usable authorized_keys entry; the message says why."""


@dataclass(frozen=True)
class KeyOptions:
    """The options of one authorized_keys line, after ``restrict`` is expanded."""

    command: str | None = None
    environment: tuple[tuple[str, str], ...] = ()
    from_patterns: tuple[str, ...] | None = None
    expiry: float | None = None
    pty: bool = True
    port_forwarding: bool = True
    agent_forwarding: bool = True
    x11_forwarding: bool = True
    user_rc: bool = True

    def permissions(self) -> LoginPermissions:
        """The per-login permissions these options grant."""
        return LoginPermissions(
            forced_command=self.command,
            environment=frozen_map(dict(self.environment)),
            pty=self.pty,
            port_forwarding=self.port_forwarding,
            agent_forwarding=self.agent_forwarding,
            x11_forwarding=self.x11_forwarding,
            user_rc=self.user_rc,
        )

    def refusal(self, address: str, now: float) -> str | None:
        """Why this entry may not be used by ``address`` at ``now``, or None."""
        if self.expiry is not None and now >= self.expiry:
            return "key expired (expiry-time)"
        if self.from_patterns is not None and not match_from(self.from_patterns, address):
            return f"address {address} not allowed by from="
        return None


@dataclass(frozen=True)
class AuthorizedKey:
    """One usable authorized_keys entry; ``origin`` says where it was read."""

    key: asyncssh.SSHKey = field(compare=False, repr=False)
    blob: bytes = field(repr=False)
    algorithm: str
    options: KeyOptions
    comment: str
    origin: str

    @property
    def fingerprint(self) -> str:
        """The SHA256 fingerprint, as ``ssh-keygen -l`` shows it."""
        return str(self.key.get_fingerprint("sha256"))


def split_options(line: str) -> tuple[list[tuple[str, str | None]], str]:
    """Split the leading option list from an authorized_keys line.

    Returns ``([(name, value-or-None)...], rest)``. Names are lower-cased
    (OpenSSH compares them case-insensitively); in values ``\\"`` stands for
    a quote, as in OpenSSH.
    """
    options: list[tuple[str, str | None]] = []
    i, n = 0, len(line)
    while True:
        start = i
        while i < n and (line[i].isalnum() or line[i] in "-_"):
            i += 1
        name = line[start:i].lower()
        if not name:
            raise KeyParseError(f"bad option syntax at column {start + 1}")
        value: str | None = None
        if i < n and line[i] == "=":
            if i + 1 >= n or line[i + 1] != '"':
                raise KeyParseError(f"option {name}: value must be in double quotes")
            i += 2
            chars: list[str] = []
            while True:
                if i >= n:
                    raise KeyParseError(f"option {name}: missing closing quote")
                if line[i] == "\\" and i + 1 < n and line[i + 1] == '"':
                    chars.append('"')
                    i += 2
                elif line[i] == '"':
                    i += 1
                    break
                else:
                    chars.append(line[i])
                    i += 1
            value = "".join(chars)
        options.append((name, value))
        if i < n and line[i] == ",":
            i += 1
            continue
        if i >= n or not line[i].isspace():
            raise KeyParseError("options must be followed by a key")
        return options, line[i:].lstrip()


def parse_expiry(value: str) -> float:
    """``YYYYMMDD[HHMM[SS]]`` (local time) or the same with ``Z`` (UTC), as epoch seconds."""
    utc = value.endswith(("Z", "z"))
    digits = value[:-1] if utc else value
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    if not digits.isdigit() or len(digits) not in formats:
        raise KeyParseError(f"expiry-time {value!r} is not YYYYMMDD[HHMM[SS]][Z]")
    try:
        moment = datetime.strptime(digits, formats[len(digits)])
    except ValueError:
        raise KeyParseError(f"expiry-time {value!r} is not a date") from None
    return (moment.replace(tzinfo=UTC) if utc else moment).timestamp()


def parse_options(raw: Iterable[tuple[str, str | None]]) -> KeyOptions:
    """Apply options in order, as sshd does.

    So ``restrict,pty`` allows a PTY and ``pty,restrict`` does not.
    """
    perms = {attr: True for attr in _PERMISSION_FLAGS.values()}
    command: str | None = None
    environment: dict[str, str] = {}
    from_patterns: tuple[str, ...] | None = None
    expiry: float | None = None
    forwarding_limited = False
    for name, value in raw:
        if name in _UNSUPPORTED:
            raise KeyParseError(_UNSUPPORTED[name])
        if name in _VALUE_OPTIONS:
            if value is None:
                raise KeyParseError(f"option {name} needs a value")
        elif name in _FLAG_OPTIONS:
            if value is not None:
                raise KeyParseError(f"option {name} takes no value")
        else:
            raise KeyParseError(f"unknown option {name!r}")

        if name == "restrict":
            perms = dict.fromkeys(perms, False)
        elif name in _PERMISSION_FLAGS:
            perms[_PERMISSION_FLAGS[name]] = True
        elif name.startswith("no-") and name[3:] in _PERMISSION_FLAGS:
            perms[_PERMISSION_FLAGS[name[3:]]] = False
        elif name == "command":
            if command is not None:
                raise KeyParseError("more than one command= option")
            command = value
        elif name == "environment":
            assert value is not None
            env_name, sep, env_value = value.partition("=")
            if not sep or not is_env_name(env_name):
                raise KeyParseError("environment= must be NAME=value with a valid NAME")
            environment.setdefault(env_name, env_value)  # the first one wins, as in sshd
        elif name == "from":
            assert value is not None
            if from_patterns is not None:
                raise KeyParseError("more than one from= option")
            patterns = tuple(p.strip() for p in value.split(","))
            for pattern in patterns:
                try:
                    check_pattern(pattern)
                except ValueError as error:
                    raise KeyParseError(f"from=: {error}") from None
            from_patterns = patterns
        elif name == "expiry-time":
            assert value is not None
            if expiry is not None:
                raise KeyParseError("more than one expiry-time= option")
            expiry = parse_expiry(value)
        elif name in ("permitopen", "permitlisten"):
            # pairpod cannot limit forwarding to listed destinations, so a
            # line that asks for a limit gets no forwarding at all.
            forwarding_limited = True
        # "tunnel" (no tunnels in pairpod) and "no-touch-required" (AsyncSSH
        # keeps requiring touch) need nothing: pairpod is already stricter.
    if forwarding_limited:
        perms["port_forwarding"] = False
    return KeyOptions(
        command=command,
        environment=tuple(environment.items()),
        from_patterns=from_patterns,
        expiry=expiry,
        **perms,
    )


def parse_key_line(line: str, origin: str, *, allow_options: bool = True) -> AuthorizedKey:
    """Parse one authorized_keys line (``[options] type base64 [comment]``)."""
    if len(line) > MAX_LINE:
        raise KeyParseError(f"line longer than {MAX_LINE} characters")
    if "\0" in line:
        raise KeyParseError("NUL byte in line")
    line = line.strip()
    if not line:
        raise KeyParseError("empty line")
    first = line.split(None, 1)[0]
    raw_options: list[tuple[str, str | None]] = []
    rest = line
    if first not in KEY_TYPES:
        if first.endswith("-cert-v01@openssh.com"):
            raise KeyParseError("a certificate is not a key")
        if not allow_options:
            raise KeyParseError(f"not a key line (unknown key type {first[:40]!r})")
        raw_options, rest = split_options(line)
    options = parse_options(raw_options)
    parts = rest.split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise KeyParseError("expected a key type and base64 key data")
    key_type, data = parts[0], parts[1]
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise KeyParseError("key data is not base64") from None
    try:
        key = asyncssh.import_public_key(f"{key_type} {data}")
    except (asyncssh.KeyImportError, ValueError):
        raise KeyParseError(f"invalid {key_type} key") from None
    if key.public_data != blob or key.algorithm.decode() != key_type:
        raise KeyParseError(f"key data does not hold a {key_type} key")
    return AuthorizedKey(
        key=key,
        blob=blob,
        algorithm=key_type,
        options=options,
        comment=parts[2].strip() if len(parts) > 2 else "",
        origin=origin,
    )


def parse_authorized_keys(
    text: str, origin: str, *, allow_options: bool = True
) -> tuple[list[AuthorizedKey], list[tuple[int, str]]]:
    """Parse authorized_keys text; bad lines are skipped, each with a log line.

    Returns the usable entries and the skipped ``(line number, reason)`` pairs.
    """
    entries: list[AuthorizedKey] = []
    skipped: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            entries.append(parse_key_line(stripped, f"{origin}:{number}", allow_options=allow_options))
        except KeyParseError as error:
            skipped.append((number, str(error)))
            log.warning("keys.line_skipped", extra=fields(origin=origin, line=number, reason=str(error)))
    return entries, skipped


def find_key(
    entries: Iterable[AuthorizedKey], key: asyncssh.SSHKey, address: str, now: float | None = None
) -> tuple[AuthorizedKey | None, list[str]]:
    """The first entry for ``key`` that ``address`` may use now.

    Like sshd, an entry whose ``from=`` or ``expiry-time`` refuses is passed
    over and later entries are still tried. Returns the entry (or None) and
    the refusals met on the way, for the log.
    """
    blob = key.public_data
    moment = time.time() if now is None else now
    refusals: list[str] = []
    for entry in entries:
        if entry.blob != blob:
            continue
        refusal = entry.options.refusal(address, moment)
        if refusal is None:
            return entry, refusals
        refusals.append(f"{entry.origin}: {refusal}")
    return None, refusals


class KeyFile:
    """An authorized_keys file, parsed again whenever it changes on disk.

    Read at each login like sshd does, so an operator's edit takes effect
    without a restart; the parse is cached on (mtime, size, inode).
    """

    def __init__(
        self,
        path: Path,
        parse: Callable[[str, str], list[AuthorizedKey]] | None = None,
        *,
        strict_modes: bool = True,
    ) -> None:
        self.path = path
        self.strict_modes = strict_modes
        self._parse = parse or (lambda text, origin: parse_authorized_keys(text, origin)[0])
        self._signature: tuple[int, int, int] | None = None
        self._entries: tuple[AuthorizedKey, ...] = ()
        self._problem: str | None = None

    def entries(self) -> tuple[AuthorizedKey, ...]:
        """The file's usable entries (none when it cannot be read)."""
        try:
            stat = os.stat(self.path)
            refusal = authorized_keys_problem(self.path) if self.strict_modes else None
            if refusal is not None:
                # Checked at every login, as sshd does: a file made writable by
                # others after it was loaded is refused from then on.
                if refusal != self._problem:
                    log.error("keys.file_refused", extra=fields(path=str(self.path), reason=refusal))
                self._problem = refusal
                self._entries, self._signature = (), None
                return self._entries
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if signature != self._signature:
                text = self.path.read_text(encoding="utf-8")
                entries = self._parse(text, str(self.path))
                self._entries, self._signature = tuple(entries), signature
                log.info("keys.file_loaded", extra=fields(path=str(self.path), keys=len(entries)))
            self._problem = None
        except (OSError, UnicodeDecodeError) as error:
            problem = getattr(error, "strerror", None) or str(error)
            if problem != self._problem:  # once per change, not once per login
                log.warning("keys.file_unreadable", extra=fields(path=str(self.path), error=problem))
            self._problem = problem
            self._entries, self._signature = (), None
        return self._entries


@dataclass
class _UserKeys:
    inline: tuple[AuthorizedKey, ...] = ()
    file: KeyFile | None = None


class StaticKeys:
    """The keys written in the config: ``auth.authorized_keys`` (any username)
    and ``auth.users.<name>.keys`` / ``.authorized_keys`` (that username)."""

    def __init__(self, auth: AuthSettings, *, strict_modes: bool = True) -> None:
        self._global = (
            KeyFile(auth.authorized_keys, strict_modes=strict_modes) if auth.authorized_keys else None
        )
        self._users: dict[str, _UserKeys] = {}
        for name, user in auth.users.items():
            inline: list[AuthorizedKey] = []
            for index, line in enumerate(user.keys):
                origin = f"auth.users.{name}.keys[{index}]"
                try:
                    inline.append(parse_key_line(line, origin))
                except KeyParseError as error:
                    log.warning("keys.line_skipped", extra=fields(origin=origin, reason=str(error)))
            file = KeyFile(user.authorized_keys, strict_modes=strict_modes) if user.authorized_keys else None
            self._users[name] = _UserKeys(tuple(inline), file)

    @property
    def configured(self) -> bool:
        """Whether any static key source exists."""
        return self._global is not None or any(u.inline or u.file for u in self._users.values())

    def refused_files(self) -> list[str]:
        """One line per key file refused for its modes now (see pairpod.auth.file_modes)."""
        files = [self._global, *(user.file for user in self._users.values())]
        lines = []
        for file in files:
            if file is not None and file.strict_modes and file.path.exists():
                problem = authorized_keys_problem(file.path)
                if problem is not None:
                    lines.append(problem)
        return lines

    def entries_for(self, username: str) -> Iterator[AuthorizedKey]:
        """Entries that may log in as ``username``: the user's own first, then the global file."""
        user = self._users.get(username)
        if user is not None:
            yield from user.inline
            if user.file is not None:
                yield from user.file.entries()
        if self._global is not None:
            yield from self._global.entries()
