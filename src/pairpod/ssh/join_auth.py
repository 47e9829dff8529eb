"""Authentication of a joiner: a connection whose username is a join link.

A join link is a username, not a credential that skips authentication: the
connection authenticates like any other, so ``ssh.login_timeout``, the
pre-auth limits and the address lockout all apply until the joiner is
admitted.

* A restricted session admits a joiner whose public key proves one of the
  identities the owner named (or the owner's own).
* An open session (``sharing.open``) admits anyone holding the link, as a
  guest: with any public key, or keyboard-interactive with no prompt (for
  clients without keys).

Every refusal (an unknown, revoked or ended link, a key nobody named, an
address locked out) is answered the same way, only after the random pause of
:func:`~pairpod.sharing.tokens.rejection_delay`: a guesser learns nothing
from timing and cannot try links quickly. Each link refused counts one
failure towards the address's lockout (counted before the pause, so hanging
up early saves nothing). The first refusal on a connection also tells the
joiner ``pairpod: invalid or expired session`` in an auth banner (OpenSSH
shows it from ``LogLevel=INFO`` on, its default), the same for every kind
of refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncssh

from pairpod.auth import Authenticator
from pairpod.auth.keys import find_key
from pairpod.log import get_logger
from pairpod.sharing.joinable import ClusterUnavailable, Joinable
from pairpod.sharing.service import SharingService
from pairpod.sharing.tokens import INVALID_SESSION_MESSAGE, Access, rejection_delay

log = get_logger("sharing")

#: keyboard-interactive with no prompt: the link itself is the credential.
NO_PROMPT: tuple[str, str, str, list[tuple[str, bool]]] = ("", "", "", [])


@dataclass(frozen=True)
class Admitted:
    """A joiner let in: through which link's access, to which session (here or
    on another replica), as whom."""

    access: Access
    session: Joinable
    name: str


class JoinAuth:
    """The join-link side of one connection's authentication (AsyncSSH callbacks)."""

    def __init__(
        self,
        service: SharingService,
        authenticator: Authenticator,
        address: str,
        send_banner: Callable[[str], None],
        log_fields: Callable[..., dict[str, Any]],
    ) -> None:
        self._service = service
        self._authenticator = authenticator
        self._lockout = authenticator.lockout
        self._address = address
        self._send_banner = send_banner
        self._log_fields = log_fields
        self._username = ""
        self._counted: set[str] = set()
        self._told = False
        # The session last found, by link: a client's key query and its signed
        # request ask twice, and the second must not cost another look-up
        # (through the store and another replica, for a session elsewhere).
        self._found: tuple[str, Joinable] | None = None
        self.admitted: Admitted | None = None

    def begin(self, username: str) -> None:
        """A (new) join username to authenticate."""
        self._username = username
        self.admitted = None

    async def _live(self) -> Joinable | None:
        """The session the link names now (here or on another replica), unless the
        address is locked out. Raises ClusterUnavailable."""
        if self._lockout.check(self._address, "", guessable=False) is not None:
            return None
        if self._found is not None and self._found[0] == self._username:
            return self._found[1]
        found = await self._service.find(self._username)
        if found is not None:
            self._found = (self._username, found)
        return found

    async def _unavailable(self, error: ClusterUnavailable) -> None:
        # Not the link's fault, and no answer about it either: said plainly,
        # not counted towards the lockout, still after the usual pause.
        log.warning("sharing.join_unavailable", extra=self._log_fields(error=error.operator_message))
        await asyncio.sleep(rejection_delay())
        if not self._told:
            self._told = True
            self._send_banner(f"pairpod: {error.user_message}\n")

    def _guest(self) -> str:
        return f"guest@{self._address}"

    def _admit(self, session: Joinable, name: str) -> bool:
        self.admitted = Admitted(session.access, session, name)
        log.info(
            "sharing.join_admitted",
            extra=self._log_fields(
                session=session.session_id, identity=name, access=session.access.value, where=session.where
            ),
        )
        return True

    async def validate_public_key(self, key: asyncssh.SSHKey) -> bool:
        """Admit a key that proves a named identity (any key, for an open session)."""
        try:
            found = await self._live()
        except ClusterUnavailable as error:
            await self._unavailable(error)
            return False
        if found is not None:
            session = found
            if session.open:  # the link alone admits: no key looked up, as with tmate
                return self._admit(session, self._guest())
            identities = await self._proven(session, key)
            log.info(
                "sharing.joiner_key",
                extra=self._log_fields(
                    session=session.session_id,
                    accepted=bool(identities),
                    identity=identities[0] if identities else None,
                ),
            )
            if identities:
                return self._admit(session, identities[0])
        await self._refuse("publickey", known=found is not None)
        return False

    async def _proven(self, session: Joinable, key: asyncssh.SSHKey) -> list[str]:
        """The identities the session admits that ``key`` proves."""
        candidates = list(session.may_join_as)
        found = await asyncio.gather(*(self._proves(identity, key) for identity in candidates))
        return [identity for identity, ok in zip(candidates, found, strict=True) if ok]

    async def _proves(self, identity: str, key: asyncssh.SSHKey) -> bool:
        entry, _ = find_key(await self._authenticator.keys_of(identity), key, self._address)
        return entry is not None

    def kbdint_challenge(self) -> tuple[str, str, str, list[tuple[str, bool]]]:
        """No prompt: the answer (admitted or not) comes with the empty response."""
        return NO_PROMPT

    async def validate_kbdint(self, responses: Sequence[str]) -> bool:
        """Admit the holder of an open session's link; refuse anything else."""
        try:
            found = await self._live()
        except ClusterUnavailable as error:
            await self._unavailable(error)
            return False
        if found is not None and found.open and not responses:
            return self._admit(found, self._guest())
        await self._refuse("keyboard-interactive", known=found is not None)
        return False

    async def _refuse(self, method: str, *, known: bool) -> None:
        if self._username not in self._counted:
            # Once per link tried on this connection: a client offering three keys
            # for one link is one guess, three links are three.
            self._counted.add(self._username)
            for lock in self._lockout.record_failure(self._address, "", guessable=False):
                log.warning(
                    "auth.lockout",
                    extra=self._log_fields(
                        addr=self._address,
                        method="join",
                        kind=lock.kind,
                        subject=lock.subject,
                        duration=lock.remaining,
                    ),
                )
            log.info(
                "sharing.join_refused",
                extra=self._log_fields(method=method, reason="key not allowed" if known else "invalid link"),
            )
        await asyncio.sleep(rejection_delay())
        if not self._told:
            self._told = True
            self._send_banner(f"pairpod: {INVALID_SESSION_MESSAGE}\n")
