"""The authentication facade: one :class:`Authenticator` per gateway, one
:class:`ConnectionAuth` per SSH connection, whose methods mirror AsyncSSH's
``SSHServer`` auth callbacks one to one.

Each credential is put to a chain of small authenticators in order; each
answers allow, deny or no opinion (:class:`Outcome`), and the first allow or
deny decides. No opinion from all of them, and any error, is a deny. Every
decision is logged with the method, the username, the source and the reason,
never the secret.

How a success reaches the session layer: an approving callback stores a
complete :class:`AuthResult` as the connection's candidate just before it
returns True. AsyncSSH then checks the signature (keys) or certificate
validity and, without awaiting anything in between, sends the success and
calls ``auth_completed``; :meth:`ConnectionAuth.auth_completed` returns that
candidate. So the result always belongs to the credential that succeeded,
even when a client probes several keys.

Wiring into an ``asyncssh.SSHServer`` (do not also pass
``authorized_client_keys`` or call ``set_authorized_keys`` yourself)::

    def connection_made(self, conn):
        self.auth = authenticator.connection(conn, self.conn_id)
    def begin_auth(self, username):
        return self.auth.begin_auth(username)
    # likewise, one line each: public_key_auth_supported, validate_public_key,
    # validate_ca_key, password_auth_supported, validate_password,
    # kbdint_auth_supported, get_kbdint_challenge, validate_kbdint_response
    def auth_completed(self):
        result = self.auth.auth_completed()   # None: close the connection
    def connection_lost(self, exc):
        self.auth.connection_lost()
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import aiohttp
import asyncssh

from pairpod.auth.certificates import (
    PrincipalRecorder,
    TrustedCAs,
    certificate_line,
    check_principals,
    record_offered_keys,
)
from pairpod.auth.keys import AuthorizedKey, StaticKeys, find_key
from pairpod.auth.lockout import Lock, Lockout, SharedLocks
from pairpod.auth.password import ChecksBusy, PasswordChecks, hash_kind, warm_up
from pairpod.auth.remote_keys import RemoteKeySource, SharedKeyCache
from pairpod.auth.result import (
    AuthDecision,
    AuthObserver,
    AuthResult,
    LoginPermissions,
    LoginValues,
    Outcome,
    Verdict,
    frozen_map,
    is_env_name,
)
from pairpod.auth.webhook import (
    AuthWebhook,
    ConfigWebhook,
    ConnectionInfo,
    WebhookAnswer,
    WebhookError,
    apply_overrides,
    format_address,
)
from pairpod.config import Config
from pairpod.log import fields, get_logger

log = get_logger("auth")

#: What ``get_kbdint_challenge`` asks: one hidden prompt, as OpenSSH's sshd does.
PASSWORD_CHALLENGE = ("", "", "", [("Password: ", False)])


class SSHConnectionLike(Protocol):
    """What the facade uses of an ``asyncssh.SSHServerConnection``."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Connection facts: ``peername``, ``client_version``."""

    def get_certificate_option(self, option: str, default: object = None) -> object:
        """An option of the certificate that authenticated the client."""

    def set_authorized_keys(self, authorized_keys: Any) -> None:
        """Set the object AsyncSSH consults first for keys and certificates."""


class Authenticator:
    """The gateway's authentication: sources, caches, lockout and HTTP client.

    Create one at startup (``config`` is the file's config), call
    :meth:`connection` for each SSH connection, and :meth:`aclose` at
    shutdown. ``clock`` (monotonic seconds) drives caches and lockout;
    ``shared_locks`` and ``shared_keys`` share them with other replicas.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        http: aiohttp.ClientSession | None = None,
        observer: AuthObserver | None = None,
        shared_locks: SharedLocks | None = None,
        shared_keys: SharedKeyCache | None = None,
    ) -> None:
        self.config = config
        #: Told every final decision (metrics, audit).
        self.observer = observer
        auth = config.auth
        self._http_session = http
        self._own_http = http is None
        self.static = StaticKeys(auth, strict_modes=config.security.strict_modes)
        self.key_sources = {
            name: RemoteKeySource(name, settings, self._http, clock=clock, shared=shared_keys)
            for name, settings in (("github", auth.key_sources.github), ("gitlab", auth.key_sources.gitlab))
        }
        self.cas = TrustedCAs(auth.trusted_user_ca_keys) if auth.trusted_user_ca_keys else None
        self.webhook = AuthWebhook(auth.webhook, self._http) if auth.webhook else None
        self.config_webhook = ConfigWebhook(auth.config_webhook, self._http) if auth.config_webhook else None
        self.lockout = Lockout(auth.lockout, clock, shared=shared_locks)
        self.password_checks = PasswordChecks(auth.password_checks.workers, auth.password_checks.queue)
        # Make the dummy hash now, so the first unknown user is not slower
        # than the ones after (which would tell that the name is unknown).
        warm_up()
        for name, user in auth.users.items():
            if user.password_hash is not None and hash_kind(user.password_hash) is None:
                log.error(
                    "auth.bad_password_hash",
                    extra=fields(
                        user=name,
                        reason="not an argon2 or bcrypt hash; password logins for this user will be refused",
                    ),
                )

    @property
    def pubkey_enabled(self) -> bool:
        """Whether any key source is configured (offered as ``publickey``)."""
        auth = self.config.auth
        return bool(
            self.static.configured
            or auth.github_users
            or auth.gitlab_users
            or any(u.github or u.gitlab for u in auth.users.values())
            or self.webhook
            or self.cas
        )

    @property
    def password_enabled(self) -> bool:
        """Whether passwords can succeed (offered as ``password`` and ``keyboard-interactive``)."""
        auth = self.config.auth
        return bool(self.webhook or any(u.password_hash for u in auth.users.values()))

    def connection(self, conn: SSHConnectionLike, conn_id: str) -> ConnectionAuth:
        """The auth state of one SSH connection (call from ``connection_made``)."""
        return ConnectionAuth(self, conn, conn_id)

    def remote_logins(self, username: str) -> list[tuple[str, str]]:
        """``(source, login)`` pairs whose published keys may log in as ``username``."""
        auth = self.config.auth
        user = auth.users.get(username)
        pairs: list[tuple[str, str]] = []
        if user is not None and user.github:
            pairs.append(("github", user.github))
        if username in auth.github_users:
            pairs.append(("github", username))
        if user is not None and user.gitlab:
            pairs.append(("gitlab", user.gitlab))
        if username in auth.gitlab_users:
            pairs.append(("gitlab", username))
        return list(dict.fromkeys(pairs))

    async def keys_of(self, identity: str) -> list[AuthorizedKey]:
        """The keys that prove ``identity`` (``github:NAME``, ``gitlab:NAME``, ``user:NAME``).

        A local user's keys are those of ``authorized_keys`` and of the forge
        logins configured for them; an unknown kind has none.
        """
        kind, _, name = identity.partition(":")
        if kind in self.key_sources:
            return list((await self.key_sources[kind].lookup(name)).entries)
        if kind != "user":
            return []
        entries = list(self.static.entries_for(name))
        for source, login in self.remote_logins(name):
            entries += (await self.key_sources[source].lookup(login)).entries
        return entries

    async def aclose(self) -> None:
        """Stop fetches in flight and close the HTTP client (if this object made it)."""
        for source in self.key_sources.values():
            await source.aclose()
        self.password_checks.close()
        if self._own_http and self._http_session is not None:
            await self._http_session.close()
            self._http_session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._http_session is None or self._http_session.closed:
            # No connection limit: a source that hangs on to its connections
            # must not make requests to the other sources queue behind it.
            self._http_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            self._own_http = True
        return self._http_session


Step = Callable[..., Awaitable[Verdict]]


class ConnectionAuth:
    """Authentication of one SSH connection; each public method is an AsyncSSH callback.

    After ``auth_completed`` the result is in :attr:`result`.
    """

    def __init__(self, owner: Authenticator, conn: SSHConnectionLike, conn_id: str) -> None:
        self._owner = owner
        self._conn = conn
        self.conn_id = conn_id
        peer = conn.get_extra_info("peername") or ("", 0)
        self.address: str = str(peer[0])
        self.port: int = int(peer[1])
        self.username: str | None = None
        self.result: AuthResult | None = None
        self._candidate: AuthResult | None = None
        self._recorder = PrincipalRecorder(self._note_principals) if owner.cas else None
        self._cert_seen: tuple[bytes, tuple[str, ...]] | None = None
        self._cert_pending: tuple[str, tuple[str, ...], str] | None = None
        self._refused_key = False
        self._attempted = False
        self._config_memo: dict[tuple[Any, ...], tuple[Config, WebhookAnswer]] = {}
        self._webhook_key_memo: dict[tuple[str, bytes], Verdict] = {}
        self._offered_key: bytes | None = None
        self._authz_memo: dict[tuple[Any, ...], Verdict] = {}
        if owner.webhook is not None:
            # Certificates go to the webhook whole, as ContainerSSH sends them.
            record_offered_keys(conn, self._note_offered_key)

    @property
    def remote_address(self) -> str:
        """``ip:port`` of the client, as webhooks want it."""
        return format_address(self.address, self.port)

    # -- AsyncSSH callbacks -------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        """Start authenticating ``username``; always True (authentication is required).

        Never answer False: AsyncSSH takes False as "no authentication needed".
        """
        self.username = username
        if self._recorder is not None:
            # AsyncSSH resets its authorized keys when the username changes,
            # just before calling begin_auth: set the recorder again each time.
            self._conn.set_authorized_keys(self._recorder)
        log.debug("auth.begin", extra=fields(conn=self.conn_id, addr=self.address, user=username))
        return True

    def public_key_auth_supported(self) -> bool:
        """Whether to offer ``publickey``."""
        return self._owner.pubkey_enabled

    def password_auth_supported(self) -> bool:
        """Whether to offer ``password``."""
        return self._owner.password_enabled

    def kbdint_auth_supported(self) -> bool:
        """Whether to offer ``keyboard-interactive`` (a password prompt)."""
        return self._owner.password_enabled

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Whether ``key`` may log in as ``username`` (AsyncSSH then checks the signature)."""
        self._settle_certificate(None)
        self._attempted = True
        method, fingerprint = "publickey", str(key.get_fingerprint("sha256"))
        lock = self._owner.lockout.check(self.address, username, guessable=False)
        if lock is not None:
            self._locked(method, username, lock)
            return False
        verdict = await self._run(
            method,
            [
                ("static_keys", self._static_key),
                ("remote_keys", self._remote_key),
                ("webhook", self._webhook_key),
            ],
            username,
            key,
        )
        if verdict.outcome is Outcome.ALLOW:
            return await self._approve(method, username, verdict, fingerprint)
        self._refused_key = True
        self._decision("auth.reject", method, username, verdict, key=fingerprint)
        return False

    async def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Whether a certificate signed by CA ``key`` may log in as ``username``.

        AsyncSSH afterwards checks the validity window, ``source-address`` and
        the signature itself.
        """
        seen, self._cert_seen = self._cert_seen, None
        self._attempted = True
        method, ca_fingerprint = "certificate", str(key.get_fingerprint("sha256"))
        lock = self._owner.lockout.check(self.address, username, guessable=False)
        verdict: Verdict
        if lock is not None:
            self._settle_certificate(None)
            self._locked(method, username, lock)
            return False
        entry = self._owner.cas.find(key) if self._owner.cas is not None else None
        if entry is None:
            verdict = Verdict.deny("trusted_user_ca_keys", f"CA {ca_fingerprint} is not trusted")
        elif seen is None or seen[0] != key.public_data:
            verdict = Verdict.deny(entry.origin, "certificate principals unknown")
        elif (problem := check_principals(seen[1], username)) is not None:
            verdict = Verdict.deny(entry.origin, problem)
        else:
            verdict = Verdict.allow(entry.origin, f"certificate signed by trusted CA {ca_fingerprint}")
        line = certificate_line(self._offered_key, key)
        if verdict.outcome is not Outcome.ALLOW and self._owner.webhook and line is not None:
            verdict = await self._run(method, [("webhook", self._webhook_key)], username, line)
        pending = (ca_fingerprint, seen[1] if seen else (), username)
        self._settle_certificate(pending)
        if verdict.outcome is not Outcome.ALLOW:
            self._refused_key = True
            self._decision("auth.reject", method, username, verdict, ca=ca_fingerprint)
            return False
        approved = await self._approve(method, username, verdict, None)
        if approved:
            self._cert_pending = pending
        return approved

    async def validate_password(self, username: str, password: str) -> bool:
        """Whether ``password`` is right for ``username``."""
        return await self._password("password", username, password)

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]] | bool:
        """The keyboard-interactive challenge: a single hidden password prompt."""
        if not self._owner.password_enabled:
            return False
        return PASSWORD_CHALLENGE

    async def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> bool:
        """Check the answer to :meth:`get_kbdint_challenge`."""
        if len(responses) != 1:
            self._decision(
                "auth.reject",
                "keyboard-interactive",
                username,
                Verdict.deny("kbdint", f"expected 1 answer, got {len(responses)}"),
            )
            return False
        return await self._password("keyboard-interactive", username, responses[0])

    def auth_completed(self) -> AuthResult | None:
        """The login that AsyncSSH just accepted (``SSHServer.auth_completed``).

        None only if AsyncSSH reported a success pairpod did not approve;
        the server must then close the connection.
        """
        candidate, self._candidate = self._candidate, None
        self._cert_pending = None
        if candidate is None or candidate.username != self.username:
            log.error(
                "auth.unexpected_success",
                extra=fields(conn=self.conn_id, addr=self.address, user=self.username),
            )
            return None
        if candidate.method == "certificate":
            # Only now are the certificate's options known (AsyncSSH reads them
            # after validate_ca_key): force-command and permit-* extensions.
            candidate = replace(
                candidate,
                permissions=LoginPermissions.from_certificate(self._conn.get_certificate_option),
            )
        self.result = candidate
        log.info(
            "auth.success",
            extra=fields(
                conn=self.conn_id,
                addr=self.address,
                method=candidate.method,
                user=candidate.username,
                authenticated_as=candidate.authenticated_as,
                source=candidate.source,
                key=candidate.key_fingerprint,
                forced_command="yes" if candidate.permissions.forced_command else None,
            ),
        )
        self._observe(
            AuthDecision(
                self.conn_id,
                self.address,
                candidate.method,
                candidate.username,
                True,
                candidate.source,
                authenticated_as=candidate.authenticated_as,
                key=candidate.key_fingerprint,
            )
        )
        return candidate

    def connection_lost(self) -> None:
        """The connection ended; a connection that never logged in counts one failure."""
        self._settle_certificate(None)
        if self.result is None and self._refused_key:
            # Keys are not guessable and clients offer several, so a failed
            # key-only connection counts once, against the address only.
            self._record_failure("publickey", self.username or "", guessable=False)
        if self.result is None and self._attempted:
            log.info(
                "auth.gave_up",
                extra=fields(conn=self.conn_id, addr=self.address, user=self.username),
            )

    # -- the chain -----------------------------------------------------------

    async def _run(self, method: str, steps: list[tuple[str, Step]], *args: Any) -> Verdict:
        reasons: list[str] = []
        for name, step in steps:
            try:
                verdict = await step(*args)
            except asyncio.CancelledError:
                raise
            except WebhookError as error:
                verdict = Verdict.deny(name, str(error))
            except Exception as error:  # deny by default on any error
                log.exception(
                    "auth.error",
                    extra=fields(conn=self.conn_id, method=method, source=name),
                )
                verdict = Verdict.deny(name, f"internal error ({type(error).__name__})")
            if verdict.outcome is not Outcome.ABSTAIN:
                return verdict
            reasons.append(f"{verdict.source}: {verdict.reason}")
        return Verdict.deny("chain", "; ".join(reasons) or "no authenticator configured")

    async def _static_key(self, username: str, key: asyncssh.SSHKey) -> Verdict:
        entry, refusals = find_key(self._owner.static.entries_for(username), key, self.address)
        for refusal in refusals:
            log.info(
                "auth.key_entry_refused",
                extra=fields(conn=self.conn_id, user=username, reason=refusal),
            )
        if entry is None:
            return Verdict.abstain("static_keys", "key not listed")
        return Verdict.allow(entry.origin, "key listed", permissions=entry.options.permissions())

    async def _remote_key(self, username: str, key: asyncssh.SSHKey) -> Verdict:
        pairs = self._owner.remote_logins(username)
        if not pairs:
            return Verdict.abstain("remote_keys", "no GitHub/GitLab login for this user")
        lookups = await asyncio.gather(
            *(self._owner.key_sources[source].lookup(login) for source, login in pairs)
        )
        notes: list[str] = []
        for (source, login), lookup in zip(pairs, lookups, strict=True):
            entry, _ = find_key(lookup.entries, key, self.address)
            if entry is not None:
                reason = "key published"
                if lookup.status == "stale":
                    reason += f" (stale cache, source failing: {lookup.problem})"
                return Verdict.allow(f"{source}({login})", reason)
            if lookup.problem:
                notes.append(f"{source}({login}) {lookup.status}: {lookup.problem}")
            else:
                notes.append(f"{source}({login}): key not published")
        return Verdict.abstain("remote_keys", "; ".join(notes))

    async def _webhook_key(self, username: str, key: asyncssh.SSHKey | str) -> Verdict:
        """Ask the webhook about a key, or a certificate given as its authorized_keys line."""
        webhook = self._owner.webhook
        if webhook is None:
            return Verdict.abstain("webhook", "no webhook configured")
        if isinstance(key, str):
            line = key
        else:
            line = f"{key.algorithm.decode()} {base64.b64encode(key.public_data).decode()}"
        memo_key = (username, line.encode())
        if memo_key in self._webhook_key_memo:
            # A client asks about a key, then signs with it: one webhook call.
            return self._webhook_key_memo[memo_key]
        answer = await webhook.pubkey(self._info(username), line)
        verdict = self._webhook_verdict(answer, "key")
        self._webhook_key_memo[memo_key] = verdict
        return verdict

    async def _password(self, method: str, username: str, password: str) -> bool:
        self._settle_certificate(None)
        self._attempted = True
        # Reserved before the hash is checked, so parallel attempts count at once.
        lockout = self._owner.lockout
        lock = lockout.reserve(self.address, username, guessable=True)
        if lock is not None:
            self._locked(method, username, lock)
            return False
        failed = True  # also when cancelled: hanging up mid-check saves the attacker nothing
        try:
            verdict = await self._run(
                method,
                [
                    ("password_hash", self._local_password),
                    ("webhook", self._webhook_password),
                    ("unknown_user", self._no_password),
                ],
                username,
                password,
            )
            failed = verdict.outcome is not Outcome.ALLOW
        finally:
            self._log_locks(method, lockout.settle(self.address, username, guessable=True, failed=failed))
        if verdict.outcome is Outcome.ALLOW:
            return await self._approve(method, username, verdict, None)
        self._decision("auth.reject", method, username, verdict)
        return False

    async def _local_password(self, username: str, password: str) -> Verdict:
        user = self._owner.config.auth.users.get(username)
        if user is None or user.password_hash is None:
            return Verdict.abstain("password_hash", "no local password")
        source = f"auth.users.{username}.password_hash"
        if hash_kind(user.password_hash) is None:
            return Verdict.deny(source, "stored hash is not an argon2 or bcrypt hash")
        try:
            matches = await self._owner.password_checks.verify(user.password_hash, password)
        except ChecksBusy as busy:
            return Verdict.deny("password_checks", f"too many password checks at once ({busy})")
        if matches:
            return Verdict.allow(source, "password matches")
        return Verdict.deny(source, "wrong password")

    async def _webhook_password(self, username: str, password: str) -> Verdict:
        webhook = self._owner.webhook
        if webhook is None:
            return Verdict.abstain("webhook", "no webhook configured")
        answer = await webhook.password(self._info(username), password)
        return self._webhook_verdict(answer, "password")

    async def _no_password(self, username: str, password: str) -> Verdict:
        try:
            await self._owner.password_checks.dummy(password)  # same time as a real check
        except ChecksBusy as busy:
            return Verdict.deny("password_checks", f"too many password checks at once ({busy})")
        return Verdict.deny("password_hash", "unknown user or no password set")

    def _webhook_verdict(self, answer: Any, what: str) -> Verdict:
        if not answer.success:
            return Verdict.deny("webhook", f"webhook refused the {what}")
        return Verdict.allow(
            "webhook",
            f"webhook accepted the {what}",
            authenticated_as=answer.authenticated_username,
            environment=answer.environment,
            metadata=answer.metadata,
            files=answer.files,
        )

    # -- approval --------------------------------------------------------------

    async def _approve(self, method: str, username: str, verdict: Verdict, fingerprint: str | None) -> bool:
        authenticated_as = verdict.authenticated_as or username
        step = "config_webhook"
        try:
            if self._owner.webhook is not None and self._owner.webhook.settings.authz:
                step = "authz"
                verdict = await self._authorize(username, authenticated_as, verdict)
                if verdict.outcome is not Outcome.ALLOW:
                    self._decision("auth.reject", method, username, verdict)
                    return False
                step = "config_webhook"
            config, answer = await self._configure(username, authenticated_as, verdict.values)
        except WebhookError as error:
            self._decision("auth.reject", method, username, Verdict.deny(step, str(error)))
            return False
        except Exception as error:  # deny by default on any error
            log.exception("auth.error", extra=fields(conn=self.conn_id, source=step))
            self._decision(
                "auth.reject",
                method,
                username,
                Verdict.deny(step, f"internal error ({type(error).__name__})"),
            )
            return False
        env = dict(verdict.permissions.environment)
        # Later sources win: auth webhook metadata, its environment, then the
        # config webhook's metadata and environment. Metadata becomes variables
        # only when the config says so, and a sensitive entry never does (as
        # in ContainerSSH's exposeAuthMetadataAsEnv).
        expose = config.security.expose_auth_metadata_as_env
        for values, is_metadata in (
            (verdict.metadata, True),
            (verdict.environment, False),
            (answer.metadata, True),
            (answer.environment, False),
        ):
            for name, item in values.items():
                if is_metadata and (not expose or item.sensitive):
                    continue
                if is_env_name(name):
                    env[name] = item.value
        result = AuthResult(
            username=username,
            authenticated_as=authenticated_as,
            method=method,
            source=verdict.source,
            config=config,
            permissions=verdict.permissions,
            env=frozen_map(env),
            key_fingerprint=fingerprint,
            files={**verdict.files, **answer.files},
        )
        self._decision(
            "auth.accept",
            method,
            username,
            verdict,
            key=fingerprint,
            authenticated_as=authenticated_as if authenticated_as != username else None,
        )
        # Nothing may be awaited after this line: AsyncSSH sends the success
        # (and calls auth_completed) in the same step as our return.
        self._candidate = result
        return True

    async def _authorize(self, username: str, authenticated_as: str, verdict: Verdict) -> Verdict:
        """Put a successful login to the webhook's ``/authz``; its values win over the login's."""
        assert self._owner.webhook is not None
        memo_key = (username, authenticated_as, *verdict.values.memo_key())
        if memo_key in self._authz_memo:
            # A key is asked about, then signed with: one authorization.
            return self._authz_memo[memo_key]
        answer = await self._owner.webhook.authorize(self._info(username), authenticated_as, verdict.values)
        if not answer.success:
            refused = Verdict.deny("authz", f"authorization webhook refused {authenticated_as!r}")
            self._authz_memo[memo_key] = refused
            return refused
        merged = answer.values.over(verdict.values)
        self._authz_memo[memo_key] = replace(
            verdict, metadata=merged.metadata, environment=merged.environment, files=merged.files
        )
        return self._authz_memo[memo_key]

    async def _configure(
        self, username: str, authenticated_as: str, values: LoginValues
    ) -> tuple[Config, WebhookAnswer]:
        webhook = self._owner.config_webhook
        if webhook is None:
            return self._owner.config, WebhookAnswer()
        memo_key = (username, authenticated_as, *values.memo_key())
        if memo_key in self._config_memo:
            return self._config_memo[memo_key]
        answer = await webhook.fetch(self._info(username), authenticated_as, values)
        config = apply_overrides(self._owner.config, answer.config, webhook.settings.format)
        if answer.config:
            log.info(
                "auth.config_override",
                extra=fields(
                    conn=self.conn_id,
                    user=username,
                    sections=",".join(sorted(answer.config)),
                ),
            )
        self._config_memo[memo_key] = (config, answer)
        return config, answer

    # -- bookkeeping -------------------------------------------------------------

    def _note_offered_key(self, key_data: bytes) -> None:
        self._offered_key = key_data

    def _note_principals(self, ca_blob: bytes, principals: tuple[str, ...]) -> None:
        self._cert_seen = (ca_blob, principals)

    def _settle_certificate(self, next_attempt: tuple[str, tuple[str, ...], str] | None) -> None:
        """Log a certificate approved here but then refused by AsyncSSH.

        After ``validate_ca_key`` approves, AsyncSSH still checks the validity
        window, source-address and signature, and tells nobody when one
        fails. The next auth event (other than the same certificate asked
        again, as clients do: first a query, then the signed request) or the
        end of the connection shows it failed.
        """
        pending, self._cert_pending = self._cert_pending, None
        if pending is None or pending == next_attempt:
            return
        self._refused_key = True
        self._decision(
            "auth.reject",
            "certificate",
            pending[2],
            Verdict.deny(
                "ssh",
                "certificate from a trusted CA refused by the SSH layer: expired or not yet "
                "valid, source-address not matching, or bad signature",
            ),
            ca=pending[0],
        )

    def _info(self, username: str) -> ConnectionInfo:
        return ConnectionInfo(
            username=username,
            remote_address=self.remote_address,
            connection_id=self.conn_id,
            client_version=str(self._conn.get_extra_info("client_version") or ""),
        )

    def _record_failure(self, method: str, username: str, *, guessable: bool) -> None:
        self._log_locks(
            method, self._owner.lockout.record_failure(self.address, username, guessable=guessable)
        )

    def _log_locks(self, method: str, locks: list[Lock]) -> None:
        for lock in locks:
            log.warning(
                "auth.lockout",
                extra=fields(
                    conn=self.conn_id,
                    addr=self.address,
                    method=method,
                    kind=lock.kind,
                    subject=lock.subject,
                    duration=lock.remaining,
                ),
            )

    def _locked(self, method: str, username: str, lock: Lock) -> None:
        self._decision(
            "auth.reject",
            method,
            username,
            Verdict.deny(
                "lockout",
                f"{lock.kind} {lock.subject} locked for {lock.remaining:.0f}s"
                if lock.remaining
                else f"{lock.kind} {lock.subject} has enough attempts in progress to lock it",
            ),
        )

    def _observe(self, decision: AuthDecision) -> None:
        if self._owner.observer is not None:
            self._owner.observer(decision)

    def _decision(self, event: str, method: str, username: str, verdict: Verdict, **extra: Any) -> None:
        if event == "auth.reject":
            # Approvals are counted once, when the login completes (a key is
            # approved twice: when the client asks, and again when it signs).
            self._observe(
                AuthDecision(
                    self.conn_id, self.address, method, username, False, verdict.source, verdict.reason
                )
            )
        log.info(
            event,
            extra=fields(
                conn=self.conn_id,
                addr=self.address,
                method=method,
                user=username,
                source=verdict.source,
                reason=verdict.reason,
                **extra,
            ),
        )
