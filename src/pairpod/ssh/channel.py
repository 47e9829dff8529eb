"""The session channels the gateway opens: a client's env requests bounded as they arrive.

AsyncSSH's server channel keeps every ``env`` request in a dict and answers
success before any session callback sees it. An authenticated client could
send any number of variables, each as large as a packet (256 KiB), and the
gateway would hold them all for as long as the channel lives. Here each
request is decided as it arrives, as sshd does:

* a name that ``security.env_allow`` does not let through (or that
  ``security.env_deny`` names) is answered with failure and not kept (sshd's
  ``AcceptEnv``). The sharing requests (``PAIRPOD_SHARE`` ...) are kept: the
  gateway reads them itself, whatever reaches the program;
* past ``security.max_env_vars`` names (sshd's 128) a request is answered
  with failure and not kept; a name already kept may be set again;
* an over-long name or value is not kept either. The channel remembers the
  first such refusal and a login's session is refused with that one line
  (``pairpod: environment variable LANG too long ...``) when it starts.

So a channel holds at most ``max_env_vars`` names of 256 bytes with values
of ``max_env_value`` bytes, however many requests arrive.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Any

import asyncssh
from asyncssh.packet import SSHPacket

from pairpod.config import SecuritySettings
from pairpod.log import get_logger
from pairpod.sharing.service import REQUEST_ENV
from pairpod.ssh.request_limits import env_refusal

log = get_logger("channel")

# AsyncSSH offers no hook for env requests: it looks a channel request's handler
# up on the channel object by name, so a handler set on the instance replaces its
# class's ``SSHServerChannel._process_env_request`` (which stores every request).
# A subclass would instead need the private arguments that the public
# ``create_server_channel`` passes to the channel's constructor.
_ENV_HANDLER = "_process_env_request"
# Where the channel's EnvRequests (and so the first over-long variable's refusal)
# wait for the session to start.
_REQUESTS_INFO = "pairpod_env_requests"
# The names the gateway reads itself, as bytes (what requests carry).
_REQUEST_NAMES = frozenset(name.encode() for name in REQUEST_ENV)


def env_name_passes(name: str, allow: Iterable[str], deny: Iterable[str] = ()) -> bool:
    """Whether a variable named ``name`` matches an ``allow`` glob and no ``deny`` glob."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in allow) and not any(
        fnmatch.fnmatchcase(name, pattern) for pattern in deny
    )


class EnvRequests:
    """The client's variables one session channel keeps, each decided as it arrives."""

    def __init__(
        self, security: SecuritySettings, kept: dict[bytes, bytes], limit_reached: Callable[[], None]
    ) -> None:
        self._security = security
        self._kept = kept
        # Names this client set (the channel may start with variables of its own).
        self._names: set[bytes] = set()
        self._limit_reached = limit_reached
        self._limit_told = False
        #: The first over-long name or value, as the line that refuses the session.
        self.refusal: str | None = None

    def receive(self, name: bytes, value: bytes) -> bool:
        """Keep ``name=value`` when it is wanted and within bounds; whether it was kept."""
        if name not in _REQUEST_NAMES and not env_name_passes(
            name.decode("utf-8", "replace"), self._security.env_allow, self._security.env_deny
        ):
            return False
        if name not in self._names and len(self._names) >= self._security.max_env_vars:
            if not self._limit_told:  # once per channel, however many follow
                self._limit_told = True
                self._limit_reached()
            return False
        refusal = env_refusal(name, value, self._security)
        if refusal is not None:
            self.refusal = self.refusal or refusal
            return False
        self._names.add(name)
        self._kept[name] = value
        return True


def open_session_channel(
    conn: asyncssh.SSHServerConnection, security: SecuritySettings, log_fields: Callable[..., dict[str, Any]]
) -> asyncssh.SSHServerChannel[bytes]:
    """A session channel of ``conn`` that keeps only the env requests ``security`` allows."""
    chan: asyncssh.SSHServerChannel[bytes] = conn.create_server_channel()

    def limit_reached() -> None:
        log.info(
            "channel.env_limit",
            extra=log_fields(reason=f"more than {security.max_env_vars} variables: the rest ignored"),
        )

    # The dict AsyncSSH's own handler stores into, which get_environment() reads.
    requests = EnvRequests(security, chan._env, limit_reached)
    chan.set_extra_info(**{_REQUESTS_INFO: requests})

    def handle(packet: SSHPacket) -> bool:
        name, value = packet.get_string(), packet.get_string()
        packet.check_end()
        return requests.receive(name, value)

    setattr(chan, _ENV_HANDLER, handle)
    return chan


def env_refusal_of(chan: asyncssh.SSHServerChannel[bytes]) -> str | None:
    """Why the client's variables on ``chan`` refuse its session (None: they do not)."""
    requests = chan.get_extra_info(_REQUESTS_INFO)
    return requests.refusal if isinstance(requests, EnvRequests) else None
