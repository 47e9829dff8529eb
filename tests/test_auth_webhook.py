"""ContainerSSH-compatible auth and config webhook clients against real loopback servers."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairpod.auth.result import LoginValues, MetadataValue
from pairpod.auth.webhook import (
    AuthWebhook,
    ConfigWebhook,
    ConnectionInfo,
    WebhookError,
    apply_overrides,
    format_address,
    parse_auth_answer,
)
from pairpod.config import Config, ConfigWebhookSettings, WebhookSettings
from tests.support.http_peers import AuthWebhookPeer, ConfigWebhookPeer, refusing_port

CONN = ConnectionInfo(
    username="alice",
    remote_address="127.0.0.1:50022",
    connection_id="c0ffee",
    client_version="SSH-2.0-OpenSSH_9.2",
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def auth_peer() -> AsyncIterator[AuthWebhookPeer]:
    peer = AuthWebhookPeer()
    peer.passwords["alice"] = "wonderland"
    peer.pubkeys["alice"] = {"ssh-ed25519 AAAAkey"}
    await peer.start()
    yield peer
    await peer.stop()


@pytest.fixture
async def config_peer() -> AsyncIterator[ConfigWebhookPeer]:
    peer = ConfigWebhookPeer()
    await peer.start()
    yield peer
    await peer.stop()


def auth_client(url: str, http: aiohttp.ClientSession, **settings: Any) -> AuthWebhook:
    return AuthWebhook(WebhookSettings(url=url, **settings), lambda: http)


# -- auth webhook ----------------------------------------------------------------------


async def test_password_request_fields_and_answer(
    auth_peer: AuthWebhookPeer, http: aiohttp.ClientSession
) -> None:
    auth_peer.extra["alice"] = {
        "authenticatedUsername": "alice@corp",
        "metadata": {"TEAM": {"value": "red", "sensitive": False}},
        "environment": {"TOKEN": {"value": "s3cr3t", "sensitive": True}, "PLAIN": {"value": "v"}},
    }
    answer = await auth_client(auth_peer.url, http).password(CONN, "wonderland")
    assert answer.success and answer.authenticated_username == "alice@corp"
    assert answer.metadata == {"TEAM": MetadataValue("red", False)}
    assert answer.environment == {
        "TOKEN": MetadataValue("s3cr3t", True),
        "PLAIN": MetadataValue("v", False),
    }
    path, body = auth_peer.requests[0]
    assert path == "/password"
    assert body == {
        "username": "alice",
        "remoteAddress": "127.0.0.1:50022",
        "connectionId": "c0ffee",
        "clientVersion": "SSH-2.0-OpenSSH_9.2",
        "metadata": {},
        "environment": {},
        "files": {},
        "passwordBase64": base64.b64encode(b"wonderland").decode(),
    }
    assert "s3cr3t" not in repr(answer)  # sensitive values never show in a repr


async def test_wrong_password_and_pubkey(auth_peer: AuthWebhookPeer, http: aiohttp.ClientSession) -> None:
    client = auth_client(auth_peer.url, http)
    assert not (await client.password(CONN, "nope")).success
    assert (await client.pubkey(CONN, "ssh-ed25519 AAAAkey")).success
    assert not (await client.pubkey(CONN, "ssh-ed25519 AAAAother")).success
    assert auth_peer.requests[1][0] == "/pubkey"
    assert auth_peer.requests[1][1]["publicKey"] == "ssh-ed25519 AAAAkey"
    assert "passwordBase64" not in auth_peer.requests[1][1]


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("500", "HTTP status 500 (after 3 attempts)"),
        ("404", "HTTP status 404"),
        ("malformed", "not JSON"),
        ("html", "not JSON"),
        ("not_object", "must be a JSON object"),
        ("wrong_types", "success must be true or false"),
        ("huge", "over 1048576 bytes"),
        ("huge_length", "2097152 bytes is over"),
    ],
)
async def test_broken_answers_raise_with_a_reason(
    auth_peer: AuthWebhookPeer, http: aiohttp.ClientSession, mode: str, problem: str
) -> None:
    auth_peer.mode = mode
    with pytest.raises(WebhookError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        await auth_client(auth_peer.url, http, retries=2).password(CONN, "wonderland")


async def test_retries_only_when_another_attempt_can_help(
    auth_peer: AuthWebhookPeer, http: aiohttp.ClientSession
) -> None:
    auth_peer.mode = "500"
    with pytest.raises(WebhookError):
        await auth_client(auth_peer.url, http, retries=2).password(CONN, "x")
    assert len(auth_peer.requests) == 3
    auth_peer.requests.clear()
    auth_peer.mode = "malformed"
    with pytest.raises(WebhookError):
        await auth_client(auth_peer.url, http, retries=2).password(CONN, "x")
    assert len(auth_peer.requests) == 1


async def test_flaky_webhook_succeeds_on_retry(
    auth_peer: AuthWebhookPeer, http: aiohttp.ClientSession
) -> None:
    auth_peer.mode, auth_peer.failures_left = "flaky", 2
    answer = await auth_client(auth_peer.url, http, retries=2).password(CONN, "wonderland")
    assert answer.success and len(auth_peer.requests) == 3


async def test_slow_webhook_times_out(auth_peer: AuthWebhookPeer, http: aiohttp.ClientSession) -> None:
    auth_peer.mode = "slow"
    with pytest.raises(WebhookError, match=r"no answer within 0.2s \(after 2 attempts\)"):
        await auth_client(auth_peer.url, http, timeout=0.2, retries=1).password(CONN, "x")


async def test_down_webhook(http: aiohttp.ClientSession) -> None:
    with refusing_port() as url, pytest.raises(WebhookError, match="cannot connect"):
        await auth_client(url, http, retries=0).password(CONN, "x")


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"success": 1}, "success must be true or false"),
        ({}, "success must be true or false"),
        ({"success": True, "authenticatedUsername": 5}, "authenticatedUsername must be a string"),
        ({"success": True, "authenticatedUsername": "a\nb"}, "not a usable name"),
        ({"success": True, "environment": []}, "environment must be an object"),
        ({"success": True, "environment": {"1X": "v"}}, "not a valid variable name"),
        ({"success": True, "environment": {"X": 5}}, "expected"),
        # ContainerSSH's Value is an object: a bare string is not one.
        ({"success": True, "environment": {"X": "v"}}, "expected"),
        ({"success": True, "environment": {"X": {"value": "v", "extra": 1}}}, "expected"),
        ({"success": True, "files": {"/f": {"value": "not base64!"}}}, "not base64"),
        ({"success": True, "files": {"relative": {"value": ""}}}, "absolute"),
        ({"success": True, "files": {"/a/../etc/x": {"value": ""}}}, "normalised"),
        ({"success": True, "surprise": 1}, "unknown field"),
        ({"success": True, "environment": {"X": {"value": 5}}}, "expected"),
        ({"success": True, "metadata": {"k": {"value": "v", "sensitive": "no"}}}, "expected"),
        ({"success": True, "metadata": {"k": {"value": "a\0b"}}}, "NUL"),
        ({"success": True, "files": []}, "files must be an object"),
    ],
)
def test_wrong_types_are_refused(answer: dict[str, Any], problem: str) -> None:
    with pytest.raises(WebhookError, match=problem):
        parse_auth_answer(answer)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_ANSWERS = st.fixed_dictionaries(
    {},
    optional={
        "success": _JSON,
        "authenticatedUsername": _JSON,
        "environment": _JSON,
        "metadata": _JSON,
        "files": _JSON,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_JSON, _ANSWERS))
def test_any_answer_parses_or_raises_webhook_error(data: Any) -> None:
    try:
        answer = parse_auth_answer(data)
    except WebhookError:
        return
    # Whatever got through is well typed, and success came only from a literal true.
    assert answer.success is data["success"]
    assert all(isinstance(v.value, str) for v in answer.environment.values())
    assert all(isinstance(v.value, str) for v in answer.metadata.values())


async def test_deeply_nested_answer_is_refused(
    auth_peer: AuthWebhookPeer, http: aiohttp.ClientSession
) -> None:
    auth_peer.mode = "raw"
    auth_peer.raw_body = b"[" * 200_000 + b"]" * 200_000  # under the size cap
    with pytest.raises(WebhookError, match="not JSON"):
        await auth_client(auth_peer.url, http).password(CONN, "x")


def test_metadata_names_need_not_be_variable_names() -> None:
    answer = parse_auth_answer({"success": True, "metadata": {"github.com/org": {"value": "x"}}})
    assert answer.metadata == {"github.com/org": MetadataValue("x")}


def test_format_address() -> None:
    assert format_address("127.0.0.1", 22) == "127.0.0.1:22"
    assert format_address("::1", 22) == "[::1]:22"


# -- config webhook --------------------------------------------------------------------


async def test_config_request_carries_identity_and_only_public_metadata(
    config_peer: ConfigWebhookPeer, http: aiohttp.ClientSession
) -> None:
    config_peer.answers["alice"] = {
        "config": {"docker": {"image": "alice/dev:1"}},
        "environment": {"EDITOR": {"value": "vim", "sensitive": False}},
    }
    client = ConfigWebhook(ConfigWebhookSettings(url=config_peer.config_url), lambda: http)
    answer = await client.fetch(
        CONN,
        "alice@corp",
        LoginValues(
            {"TEAM": MetadataValue("red"), "TOKEN": MetadataValue("s3cr3t", True)},
            {"HOME_HINT": MetadataValue("/h"), "SECRET": MetadataValue("x", True)},
        ),
    )
    assert answer.config == {"docker": {"image": "alice/dev:1"}}
    assert answer.environment == {"EDITOR": MetadataValue("vim")}
    path, body = config_peer.requests[0]
    assert path == "/config"
    assert body == {
        "username": "alice",
        "authenticatedUsername": "alice@corp",
        "remoteAddress": "127.0.0.1:50022",
        "connectionId": "c0ffee",
        "clientVersion": "SSH-2.0-OpenSSH_9.2",
        "metadata": {"TEAM": {"value": "red", "sensitive": False}},
        "environment": {"HOME_HINT": {"value": "/h", "sensitive": False}},
        "files": {},
    }


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("500", "HTTP status 500"),
        ("malformed", "not JSON"),
        ("not_object", "must be a JSON object"),
        ("huge", "over 1048576 bytes"),
    ],
)
async def test_config_webhook_broken_modes(
    config_peer: ConfigWebhookPeer, http: aiohttp.ClientSession, mode: str, problem: str
) -> None:
    config_peer.mode = mode
    client = ConfigWebhook(ConfigWebhookSettings(url=config_peer.config_url), lambda: http)
    with pytest.raises(WebhookError, match=problem):
        await client.fetch(CONN, "alice", LoginValues())


async def test_config_answer_of_wrong_type(
    config_peer: ConfigWebhookPeer, http: aiohttp.ClientSession
) -> None:
    config_peer.answers["alice"] = {"config": ["docker"]}
    client = ConfigWebhook(ConfigWebhookSettings(url=config_peer.config_url), lambda: http)
    with pytest.raises(WebhookError, match="config must be an object"):
        await client.fetch(CONN, "alice", LoginValues())


def test_overrides_merge_and_validate_with_the_config_model() -> None:
    base = Config(backend="docker")
    merged = apply_overrides(base, {"docker": {"image": "x:1", "limits": {"memory": "2g"}}})
    assert merged.docker.image == "x:1" and merged.docker.limits.memory == "2g"
    assert merged.docker.limits.cpus == base.docker.limits.cpus  # untouched keys kept
    assert base.docker.image == "debian:bookworm-slim"  # the file's config is not changed
    assert apply_overrides(base, {}) is base


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"auth": {"github_users": ["mallory"]}}, r"sections \['auth'\] may not be overridden"),
        ({"listen": "0.0.0.0:22"}, "may not be overridden"),
        ({"docker": {"image": 5}}, "docker.image"),
        ({"docker": {"no_such_key": 1}}, "docker.no_such_key: unknown key"),
        ({"backend": "vm"}, "backend"),
        ({"security": {"allow_pty": "sometimes"}}, "security.allow_pty"),
    ],
)
def test_invalid_overrides_are_refused(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(WebhookError, match=problem):
        apply_overrides(Config(), overrides)
