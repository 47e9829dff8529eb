"""The Authenticator facade behind a real AsyncSSH server, driven by AsyncSSH clients.

``AuthServer`` below is the reference wiring: an ``asyncssh.SSHServer``
whose auth callbacks delegate one to one to :class:`ConnectionAuth`. Its
sessions print what the login produced (user, env, forced command, image),
so each test observes the result from inside a session.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest

from pairpod.auth import Authenticator, AuthResult, ConnectionAuth, MetadataValue, hash_password
from pairpod.config import merge, validate_config
from pairpod.log import JsonFormatter, TextFormatter
from tests.support.http_peers import (
    AuthWebhookPeer,
    ConfigWebhookPeer,
    KeySourcePeer,
    refusing_port,
)

_ids = itertools.count(1)


class AuthServer(asyncssh.SSHServer):
    """The minimal server wiring of the facade (what pairpod's server does)."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.auth: ConnectionAuth
        self.result: AuthResult | None = None
        self.conn: asyncssh.SSHServerConnection

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.auth = self.harness.authenticator.connection(conn, f"c{next(_ids)}")
        self.harness.servers[conn] = self

    def connection_lost(self, exc: Exception | None) -> None:
        self.auth.connection_lost()
        self.harness.lost.put_nowait(None)

    def begin_auth(self, username: str) -> bool:
        return self.auth.begin_auth(username)

    def public_key_auth_supported(self) -> bool:
        return self.auth.public_key_auth_supported()

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> Awaitable[bool]:
        return self.auth.validate_public_key(username, key)

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> Awaitable[bool]:
        return self.auth.validate_ca_key(username, key)

    def password_auth_supported(self) -> bool:
        return self.auth.password_auth_supported()

    def validate_password(self, username: str, password: str) -> Awaitable[bool]:
        return self.auth.validate_password(username, password)

    def kbdint_auth_supported(self) -> bool:
        return self.auth.kbdint_auth_supported()

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> Any:
        return self.auth.get_kbdint_challenge(username, lang, submethods)

    def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> Any:
        return self.auth.validate_kbdint_response(username, responses)

    def auth_completed(self) -> None:
        self.result = self.auth.auth_completed()
        if self.result is None:
            self.conn.close()


@dataclass
class Harness:
    """A running AsyncSSH server with the facade behind it."""

    authenticator: Authenticator
    server: asyncssh.SSHAcceptor | None = None
    servers: dict[Any, AuthServer] = field(default_factory=dict)
    lost: asyncio.Queue[None] = field(default_factory=asyncio.Queue)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def session(self, process: asyncssh.SSHServerProcess[str]) -> None:
        """Print what this login produced, as JSON; run the forced command's name."""
        server = self.servers[process.get_extra_info("connection")]
        result = server.result
        assert result is not None
        forced = result.permissions.forced_command
        process.stdout.write(
            json.dumps(
                {
                    "user": result.username,
                    "as": result.authenticated_as,
                    "method": result.method,
                    "source": result.source,
                    "env": dict(result.env),
                    # The session layer runs the forced command instead of the client's.
                    "command": forced if forced is not None else process.command,
                    "forced": forced,
                    "pty": result.permissions.pty,
                    "port_forwarding": result.permissions.port_forwarding,
                    "image": result.config.docker.image,
                    "key": result.key_fingerprint,
                }
            )
            + "\n"
        )
        process.exit(0)


@pytest.fixture(scope="session")
def host_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture(scope="session")
def user_keys() -> list[asyncssh.SSHKey]:
    return [asyncssh.generate_private_key("ssh-ed25519") for _ in range(3)]


def pub(key: asyncssh.SSHKey) -> str:
    return " ".join(key.export_public_key().decode().split()[:2])


MakeServer = Callable[..., Awaitable[Harness]]


async def start_harness(host_key: asyncssh.SSHKey, auth: dict[str, Any], **config: Any) -> Harness:
    """An AsyncSSH server on a free loopback port with an Authenticator for ``auth``."""
    harness = Harness(Authenticator(validate_config(merge({"auth": auth}, config), "test")))
    harness.server = await asyncssh.create_server(
        lambda: AuthServer(harness),
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        process_factory=harness.session,
        agent_forwarding=False,
    )
    return harness


async def stop_harness(harness: Harness) -> None:
    """Stop listening and close the Authenticator."""
    assert harness.server is not None
    harness.server.close()
    await harness.server.wait_closed()
    await harness.authenticator.aclose()


@pytest.fixture
async def make_server(host_key: asyncssh.SSHKey) -> AsyncIterator[MakeServer]:
    harnesses: list[Harness] = []

    async def make(auth: dict[str, Any], **config: Any) -> Harness:
        harness = await start_harness(host_key, auth, **config)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        await stop_harness(harness)


async def login(harness: Harness, user: str, **options: Any) -> dict[str, Any]:
    """Log in with AsyncSSH and return what the session printed."""
    async with asyncssh.connect(
        "127.0.0.1",
        harness.port,
        username=user,
        known_hosts=None,
        agent_path=None,
        config=None,
        client_keys=options.pop("client_keys", None),
        **options,
    ) as conn:
        result = await conn.run("client-command", check=True)
    return json.loads(str(result.stdout))


async def refused(harness: Harness, user: str, **options: Any) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        await login(harness, user, **options)


def decisions(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [dict(getattr(r, "pairpod_fields", {})) for r in caplog.records if r.getMessage() == event]


def assert_never_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """No rendered log line, in either format, contains any of ``secrets``."""
    rendered = [f.format(r) for r in caplog.records for f in (TextFormatter(), JsonFormatter())]
    for secret in secrets:
        assert not any(secret in line for line in rendered), secret


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "pairpod")


# -- static keys and their options ------------------------------------------------------


async def test_static_key_login_with_options(
    make_server: MakeServer,
    user_keys: list[asyncssh.SSHKey],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys_file = tmp_path / "authorized_keys"
    keys_file.write_text(f'restrict,command="echo forced",environment="STAGE=prod" {pub(user_keys[0])}\n')
    harness = await make_server({"authorized_keys": str(keys_file)})
    out = await login(harness, "anyone", client_keys=[user_keys[0]])
    assert out["user"] == out["as"] == "anyone"
    assert out["method"] == "publickey" and out["source"] == f"{keys_file}:1"
    assert out["forced"] == "echo forced" and out["command"] == "echo forced"
    assert out["env"] == {"STAGE": "prod"}
    assert out["pty"] is False and out["port_forwarding"] is False
    assert out["key"] == user_keys[0].get_fingerprint()
    [success] = decisions(caplog, "auth.success")
    assert success["method"] == "publickey" and success["user"] == "anyone"
    assert success["source"] == f"{keys_file}:1" and success["forced_command"] == "yes"


async def test_unknown_key_is_refused_and_logged(
    make_server: MakeServer, user_keys: list[asyncssh.SSHKey], caplog: pytest.LogCaptureFixture
) -> None:
    harness = await make_server({"users": {"alice": {"keys": [pub(user_keys[0])]}}})
    await refused(harness, "alice", client_keys=[user_keys[1]])
    await refused(harness, "bob", client_keys=[user_keys[0]])  # alice's key is not bob's
    rejects = decisions(caplog, "auth.reject")
    assert len(rejects) == 2
    assert all(r["method"] == "publickey" and r["source"] == "chain" for r in rejects)
    assert rejects[0]["user"] == "alice" and "key not listed" in rejects[0]["reason"]
    assert rejects[0]["key"] == user_keys[1].get_fingerprint()
    assert decisions(caplog, "auth.success") == []


async def test_from_option_is_honoured(
    make_server: MakeServer, user_keys: list[asyncssh.SSHKey], caplog: pytest.LogCaptureFixture
) -> None:
    harness = await make_server(
        {
            "users": {
                "alice": {"keys": [f'from="10.0.0.0/8" {pub(user_keys[0])}']},
                "bob": {"keys": [f'from="127.0.0.0/8,!127.0.0.2" {pub(user_keys[0])}']},
            }
        }
    )
    await refused(harness, "alice", client_keys=[user_keys[0]])
    refusals = decisions(caplog, "auth.key_entry_refused")
    assert "address 127.0.0.1 not allowed by from=" in refusals[0]["reason"]
    assert (await login(harness, "bob", client_keys=[user_keys[0]]))["user"] == "bob"


async def test_each_login_gets_the_permissions_of_the_key_that_succeeded(
    make_server: MakeServer, user_keys: list[asyncssh.SSHKey]
) -> None:
    harness = await make_server(
        {
            "users": {
                "alice": {
                    "keys": [
                        f'command="restricted" {pub(user_keys[0])}',
                        pub(user_keys[1]),
                    ]
                }
            }
        }
    )
    out = await login(harness, "alice", client_keys=[user_keys[0], user_keys[1]])
    assert out["forced"] == "restricted" and out["key"] == user_keys[0].get_fingerprint()
    out = await login(harness, "alice", client_keys=[user_keys[2], user_keys[1]])
    assert out["forced"] is None and out["key"] == user_keys[1].get_fingerprint()


# -- GitHub / GitLab keys ------------------------------------------------------------------


@pytest.fixture
async def key_server(user_keys: list[asyncssh.SSHKey]) -> AsyncIterator[KeySourcePeer]:
    peer = KeySourcePeer()
    peer.keys["alice"] = pub(user_keys[0]) + "\n"
    peer.keys["bob-gh"] = pub(user_keys[1]) + "\n"
    await peer.start()
    yield peer
    await peer.stop()


async def test_github_and_gitlab_users(
    make_server: MakeServer, user_keys: list[asyncssh.SSHKey], key_server: KeySourcePeer
) -> None:
    harness = await make_server(
        {
            "github_users": ["alice"],
            "users": {"bob": {"gitlab": "bob-gh"}},
            "key_sources": {"github": {"url": key_server.url}, "gitlab": {"url": key_server.url}},
        }
    )
    out = await login(harness, "alice", client_keys=[user_keys[0]])
    assert out["source"] == "github(alice)"
    out = await login(harness, "bob", client_keys=[user_keys[1]])
    assert out["source"] == "gitlab(bob-gh)"
    await refused(harness, "carol", client_keys=[user_keys[0]])  # not a listed login
    await refused(harness, "alice", client_keys=[user_keys[1]])  # bob's key is not alice's
    assert key_server.counts["alice"] == 1  # probe and signature: one fetch, then cache


async def test_key_source_down_denies_with_reason_and_others_still_log_in(
    make_server: MakeServer, user_keys: list[asyncssh.SSHKey], caplog: pytest.LogCaptureFixture
) -> None:
    with refusing_port() as url:
        harness = await make_server(
            {
                "github_users": ["alice"],
                "users": {"bob": {"keys": [pub(user_keys[1])]}},
                "key_sources": {"github": {"url": url}},
            }
        )
        await refused(harness, "alice", client_keys=[user_keys[0]])
        assert (await login(harness, "bob", client_keys=[user_keys[1]]))["user"] == "bob"
    [reject] = [r for r in decisions(caplog, "auth.reject") if r["user"] == "alice"]
    assert "github(alice) unavailable: cannot connect" in reject["reason"]


async def test_slow_key_source_does_not_block_other_logins(
    make_server: MakeServer, user_keys: list[asyncssh.SSHKey], key_server: KeySourcePeer
) -> None:
    key_server.modes["alice"] = "slow"
    harness = await make_server(
        {
            "github_users": ["alice"],
            "users": {"bob": {"keys": [pub(user_keys[1])]}},
            "key_sources": {"github": {"url": key_server.url}},
        },
        ssh={"login_timeout": "60s"},
    )
    alice = asyncio.create_task(login(harness, "alice", client_keys=[user_keys[0]]))
    await key_server.wait_requests(1)
    # alice's keys are held back by the source until bob is in.
    assert (await login(harness, "bob", client_keys=[user_keys[1]]))["user"] == "bob"
    assert not alice.done()
    key_server.release.set()
    assert (await alice)["source"] == "github(alice)"


# -- passwords -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def alice_hash() -> str:
    return hash_password("wonderland")


async def test_password_and_keyboard_interactive(
    make_server: MakeServer, alice_hash: str, caplog: pytest.LogCaptureFixture
) -> None:
    import bcrypt

    bob_hash = bcrypt.hashpw(b"builder", bcrypt.gensalt(rounds=4)).decode()
    harness = await make_server(
        {"users": {"alice": {"password_hash": alice_hash}, "bob": {"password_hash": bob_hash}}}
    )
    out = await login(harness, "alice", password="wonderland", preferred_auth="password")
    assert out["method"] == "password" and out["source"] == "auth.users.alice.password_hash"
    out = await login(harness, "alice", password="wonderland", preferred_auth="keyboard-interactive")
    assert out["method"] == "keyboard-interactive"
    assert (await login(harness, "bob", password="builder"))["user"] == "bob"
    await refused(harness, "alice", password="Guess-123", preferred_auth="password")
    await refused(harness, "nobody", password="wonderland", preferred_auth="password")
    reasons = {(r["user"], r["reason"]) for r in decisions(caplog, "auth.reject")}
    assert ("alice", "wrong password") in reasons
    assert ("nobody", "unknown user or no password set") in reasons
    assert_never_logged(caplog, "wonderland", "builder", "Guess-123")


async def test_password_methods_not_offered_without_a_password_source(
    make_server: MakeServer, user_keys: list[asyncssh.SSHKey]
) -> None:
    harness = await make_server({"users": {"alice": {"keys": [pub(user_keys[0])]}}})
    await refused(harness, "alice", password="x", preferred_auth="password,keyboard-interactive")


# -- auth webhook --------------------------------------------------------------------------


@pytest.fixture
async def webhook() -> AsyncIterator[AuthWebhookPeer]:
    peer = AuthWebhookPeer()
    peer.passwords["alice"] = "wonderland"
    peer.extra["alice"] = {
        "authenticatedUsername": "alice@example.org",
        "metadata": {
            "TEAM": {"value": "red", "sensitive": False},
            "API_TOKEN": {"value": "tok-SENSITIVE-42", "sensitive": True},
            "not.a.variable": {"value": "ignored", "sensitive": False},
        },
        "environment": {
            "EDITOR": {"value": "vim", "sensitive": False},
            "DB_PASSWORD": {"value": "db-SENSITIVE-7", "sensitive": True},
        },
    }
    await peer.start()
    yield peer
    await peer.stop()


@pytest.mark.parametrize("expose", [False, True])
async def test_webhook_password_login_carries_env_and_metadata(
    make_server: MakeServer,
    webhook: AuthWebhookPeer,
    caplog: pytest.LogCaptureFixture,
    expose: bool,
) -> None:
    harness = await make_server(
        {"webhook": {"url": webhook.url}},
        security={"expose_auth_metadata_as_env": expose},
    )
    out = await login(harness, "alice", password="wonderland", preferred_auth="password")
    assert out["as"] == "alice@example.org" and out["source"] == "webhook"
    # The environment always; metadata only when exposed, and never a sensitive entry.
    expected = {"EDITOR": "vim", "DB_PASSWORD": "db-SENSITIVE-7"}
    if expose:
        expected["TEAM"] = "red"
    assert out["env"] == expected
    body = webhook.requests[0][1]
    assert body["username"] == "alice" and body["clientVersion"].startswith("SSH-2.0-AsyncSSH")
    assert body["remoteAddress"].startswith("127.0.0.1:")
    assert_never_logged(caplog, "wonderland", "tok-SENSITIVE-42", "db-SENSITIVE-7")
    [success] = decisions(caplog, "auth.success")
    assert success["authenticated_as"] == "alice@example.org"


async def test_webhook_pubkey_login(
    make_server: MakeServer, webhook: AuthWebhookPeer, user_keys: list[asyncssh.SSHKey]
) -> None:
    webhook.pubkeys["alice"] = {pub(user_keys[0])}
    harness = await make_server({"webhook": {"url": webhook.url}})
    out = await login(harness, "alice", client_keys=[user_keys[0]])
    assert out["method"] == "publickey" and out["as"] == "alice@example.org"
    paths = [p for p, _ in webhook.requests]
    assert paths == ["/pubkey"]  # the query and the signed request share one answer
    await refused(harness, "alice", client_keys=[user_keys[1]])


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("500", "HTTP status 500 (after 2 attempts)"),
        ("slow", "no answer within 0.3s"),
        ("malformed", "answer is not JSON"),
        ("wrong_types", "success must be true or false"),
        ("huge", "answer over 1048576 bytes"),
        ("not_object", "answer must be a JSON object"),
    ],
)
async def test_webhook_failures_deny_with_reason_and_the_gateway_keeps_serving(
    make_server: MakeServer,
    webhook: AuthWebhookPeer,
    user_keys: list[asyncssh.SSHKey],
    caplog: pytest.LogCaptureFixture,
    mode: str,
    reason: str,
) -> None:
    webhook.mode = mode
    harness = await make_server(
        {
            "webhook": {"url": webhook.url, "timeout": 0.3, "retries": 1},
            "users": {"bob": {"keys": [pub(user_keys[1])]}},
        }
    )
    await refused(harness, "alice", password="wonderland", preferred_auth="password")
    [reject] = decisions(caplog, "auth.reject")
    assert reject["source"] == "webhook" and reason in reject["reason"]
    assert (await login(harness, "bob", client_keys=[user_keys[1]]))["user"] == "bob"
    assert_never_logged(caplog, "wonderland")


async def test_webhook_down_denies(make_server: MakeServer, caplog: pytest.LogCaptureFixture) -> None:
    with refusing_port() as url:
        harness = await make_server({"webhook": {"url": url, "retries": 0}})
        await refused(harness, "alice", password="wonderland", preferred_auth="password")
    [reject] = decisions(caplog, "auth.reject")
    assert reject["source"] == "webhook" and reject["reason"].startswith("cannot connect")


async def test_local_hash_is_final_and_webhook_serves_other_users(
    make_server: MakeServer, webhook: AuthWebhookPeer, alice_hash: str
) -> None:
    webhook.passwords["carol"] = "c4rol"
    harness = await make_server(
        {"webhook": {"url": webhook.url}, "users": {"alice": {"password_hash": alice_hash}}}
    )
    # alice has a local hash: a wrong password is not retried against the webhook.
    await refused(harness, "alice", password="not-wonderland", preferred_auth="password")
    assert webhook.requests == []
    assert (await login(harness, "carol", password="c4rol"))["source"] == "webhook"


# -- config webhook ------------------------------------------------------------------------


@pytest.fixture
async def config_hook() -> AsyncIterator[ConfigWebhookPeer]:
    peer = ConfigWebhookPeer()
    peer.answers["alice"] = {
        "config": {"docker": {"image": "registry.local/alice:dev"}},
        "environment": {"FROM_CONFIG": {"value": "yes", "sensitive": False}},
    }
    peer.answers["mallory"] = {"config": {"auth": {"github_users": ["mallory"]}}}
    peer.answers["typo"] = {"config": {"docker": {"imagee": "x"}}}
    await peer.start()
    yield peer
    await peer.stop()


async def test_config_webhook_override_is_seen_in_the_session(
    make_server: MakeServer,
    config_hook: ConfigWebhookPeer,
    user_keys: list[asyncssh.SSHKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = {"keys": [pub(user_keys[0])]}
    harness = await make_server(
        {
            "config_webhook": {"url": config_hook.config_url},
            "users": {"alice": keys, "bob": keys, "mallory": keys, "typo": keys},
        }
    )
    out = await login(harness, "alice", client_keys=[user_keys[0]])
    assert out["image"] == "registry.local/alice:dev" and out["env"] == {"FROM_CONFIG": "yes"}
    assert len(config_hook.requests) == 1  # key query and signature: one config request
    assert config_hook.requests[0][1]["authenticatedUsername"] == "alice"
    assert (await login(harness, "bob", client_keys=[user_keys[0]]))["image"] == ("debian:bookworm-slim")
    await refused(harness, "mallory", client_keys=[user_keys[0]])
    await refused(harness, "typo", client_keys=[user_keys[0]])
    rejects = {r["user"]: r for r in decisions(caplog, "auth.reject")}
    assert rejects["mallory"]["source"] == "config_webhook"
    assert "sections ['auth'] may not be overridden" in rejects["mallory"]["reason"]
    assert "docker.imagee: unknown key" in rejects["typo"]["reason"]


@pytest.mark.parametrize("mode", ["500", "malformed", "slow", "huge"])
async def test_config_webhook_failure_denies(
    make_server: MakeServer,
    config_hook: ConfigWebhookPeer,
    user_keys: list[asyncssh.SSHKey],
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    config_hook.mode = mode
    harness = await make_server(
        {
            "config_webhook": {"url": config_hook.config_url, "timeout": 0.3},
            "users": {"alice": {"keys": [pub(user_keys[0])]}},
        }
    )
    await refused(harness, "alice", client_keys=[user_keys[0]])
    assert {r["source"] for r in decisions(caplog, "auth.reject")} == {"config_webhook"}


# -- lockout -------------------------------------------------------------------------------


async def test_lockout_after_failures(
    make_server: MakeServer,
    alice_hash: str,
    user_keys: list[asyncssh.SSHKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = await make_server(
        {
            "users": {"alice": {"password_hash": alice_hash, "keys": [pub(user_keys[0])]}},
            "lockout": {"failures": 2, "window": "1h", "duration": "1h"},
        }
    )
    for _ in range(2):
        await refused(harness, "alice", password="guess", preferred_auth="password")
    [lock_address, lock_user] = decisions(caplog, "auth.lockout")
    assert lock_address["kind"] == "address" and lock_address["subject"] == "127.0.0.1"
    assert lock_user["kind"] == "username" and lock_user["subject"] == "alice"
    # The right password is refused now, and so is a key from the locked address.
    await refused(harness, "alice", password="wonderland", preferred_auth="password")
    await refused(harness, "alice", client_keys=[user_keys[0]])
    locked = [r for r in decisions(caplog, "auth.reject") if r["source"] == "lockout"]
    assert {r["method"] for r in locked} == {"password", "publickey"}


# -- certificates (AsyncSSH client; the OpenSSH client is in test_auth_openssh) -------------


@pytest.fixture(scope="session")
def cas() -> list[asyncssh.SSHKey]:
    return [asyncssh.generate_private_key("ssh-ed25519") for _ in range(2)]


@pytest.fixture
async def cert_server(make_server: MakeServer, cas: list[asyncssh.SSHKey], tmp_path: Path) -> Harness:
    ca_file = tmp_path / "ca_keys"
    ca_file.write_text(f"# trusted\ncert-authority {pub(cas[0])}\n")
    return await make_server({"trusted_user_ca_keys": str(ca_file)})


def certify(
    ca: asyncssh.SSHKey, key: asyncssh.SSHKey, principals: list[str], **options: Any
) -> asyncssh.SSHCertificate:
    valid_after = options.pop("valid_after", 0)
    valid_before = options.pop("valid_before", time.time() + 3600)
    return ca.generate_user_certificate(
        key,
        "test-id",
        principals=principals,
        valid_after=valid_after,
        valid_before=valid_before,
        **options,
    )


async def test_certificate_login(
    cert_server: Harness,
    cas: list[asyncssh.SSHKey],
    user_keys: list[asyncssh.SSHKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert = certify(cas[0], user_keys[0], ["alice", "ops"])
    out = await login(cert_server, "alice", client_keys=[(user_keys[0], cert)])
    assert out["method"] == "certificate" and out["pty"] is True and out["forced"] is None
    assert out["source"].endswith("ca_keys:2")
    assert decisions(caplog, "auth.reject") == []


async def test_certificate_force_command(
    cert_server: Harness, cas: list[asyncssh.SSHKey], user_keys: list[asyncssh.SSHKey]
) -> None:
    cert = certify(cas[0], user_keys[0], ["alice"], force_command="uptime", permit_pty=False)
    out = await login(cert_server, "alice", client_keys=[(user_keys[0], cert)])
    assert out["forced"] == "uptime" and out["command"] == "uptime" and out["pty"] is False


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong_principal", "do not include 'alice'"),
        ("no_principals", "certificate lacks a principal list"),
        ("untrusted_ca", "is not trusted"),
        ("expired", "refused by the SSH layer"),
        ("not_yet_valid", "refused by the SSH layer"),
        ("source_address", "refused by the SSH layer"),
    ],
)
async def test_bad_certificates_are_refused(
    cert_server: Harness,
    cas: list[asyncssh.SSHKey],
    user_keys: list[asyncssh.SSHKey],
    caplog: pytest.LogCaptureFixture,
    case: str,
    reason: str,
) -> None:
    ca, principals, options = cas[0], ["alice"], {}
    if case == "wrong_principal":
        principals = ["bob"]
    elif case == "no_principals":
        principals = []
    elif case == "untrusted_ca":
        ca = cas[1]
    elif case == "expired":
        options = {"valid_after": time.time() - 7200, "valid_before": time.time() - 3600}
    elif case == "not_yet_valid":
        options = {"valid_after": time.time() + 3600, "valid_before": time.time() + 7200}
    elif case == "source_address":
        options = {"source_address": ["10.0.0.0/8"]}
    cert = certify(ca, user_keys[0], principals, **options)
    await refused(cert_server, "alice", client_keys=[(user_keys[0], cert)])
    await cert_server.lost.get()  # the server side has seen the connection end
    rejects = decisions(caplog, "auth.reject")
    assert any(r["method"] == "certificate" and reason in r["reason"] for r in rejects), rejects


# -- the facade without SSH ----------------------------------------------------------------


class _Conn:
    """Stands in for the SSH connection object in facade-only tests."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 4242), "client_version": "SSH-2.0-test"}.get(name, default)

    def get_certificate_option(self, option: str, default: object = None) -> object:
        return default

    def set_authorized_keys(self, authorized_keys: Any) -> None:
        pass


async def test_success_without_an_approval_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    authenticator = Authenticator(validate_config({}, "test"))
    auth = authenticator.connection(_Conn(), "c1")
    assert auth.begin_auth("alice") is True
    assert auth.auth_completed() is None
    assert decisions(caplog, "auth.unexpected_success")
    await authenticator.aclose()


async def test_begin_auth_never_skips_authentication() -> None:
    authenticator = Authenticator(validate_config({}, "test"))
    auth = authenticator.connection(_Conn(), "c1")
    assert auth.begin_auth("") is True
    assert not auth.public_key_auth_supported() and not auth.password_auth_supported()
    assert auth.get_kbdint_challenge("alice", "", "") is False
    assert not await auth.validate_password("alice", "x")
    await authenticator.aclose()


async def test_shared_http_session_is_not_closed_by_the_authenticator() -> None:
    async with aiohttp.ClientSession() as http:
        authenticator = Authenticator(validate_config({}, "test"), http=http)
        await authenticator.aclose()
        assert not http.closed


async def test_the_last_approved_credential_is_the_result(
    user_keys: list[asyncssh.SSHKey],
) -> None:
    # A client may ask about a key it does not hold (public keys are public)
    # and then sign with another: AsyncSSH reports success right after the
    # approval of the signed one, so that approval must be the result.
    config = validate_config(
        {
            "auth": {
                "users": {"alice": {"keys": [f'command="restricted" {pub(user_keys[0])}', pub(user_keys[1])]}}
            }
        },
        "test",
    )
    authenticator = Authenticator(config)
    auth = authenticator.connection(_Conn(), "c9")
    auth.begin_auth("alice")
    assert await auth.validate_public_key("alice", user_keys[1])  # a query for the open key
    assert await auth.validate_public_key("alice", user_keys[0])  # signed with the restricted
    result = auth.auth_completed()
    assert result is not None and result.permissions.forced_command == "restricted"
    assert result.key_fingerprint == user_keys[0].get_fingerprint()
    identity = result.identity("c9", "127.0.0.1:4242")
    assert identity.username == "alice" and identity.config is config
    assert auth.auth_completed() is None  # one approval, one success
    await authenticator.aclose()


async def test_repr_of_a_result_hides_env_values() -> None:
    result = AuthResult(
        username="a",
        authenticated_as="a",
        method="password",
        source="webhook",
        config=validate_config({}, "test"),
        env={"TOKEN": "tok-SENSITIVE-42"},
    )
    assert "tok-SENSITIVE-42" not in repr(result)
    assert "tok-SENSITIVE-42" not in repr(MetadataValue("tok-SENSITIVE-42", True))
