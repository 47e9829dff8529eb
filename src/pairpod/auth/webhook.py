"""ContainerSSH-compatible webhook clients: the auth webhook and the config webhook.

Auth webhook: JSON ``POST <url>/password`` and ``POST <url>/pubkey`` with
``username``, ``remoteAddress`` (``ip:port``), ``connectionId``,
``clientVersion``, ``metadata``, ``environment``, ``files`` and either
``passwordBase64`` or ``publicKey`` (an authorized_keys line). The answer,
HTTP 200 either way, is ``{"success": bool, "authenticatedUsername": str,
"metadata": {name: {"value": str, "sensitive": bool}}, "environment":
{...}, "files": {...}}``.

``files`` map absolute paths to ``{"value": base64, "sensitive": bool}``
(Go's encoding of ``[]byte``). With ``authz: true`` a login that succeeded
is then put to ``POST <url>/authz`` (the connection fields plus
``authenticatedUsername``, metadata, environment and files); its answer has
the auth answer's shape and its values win over the login's.

Config webhook: JSON ``POST <url>`` with the same connection fields plus
``authenticatedUsername`` and the non-sensitive metadata, environment and
files; the answer is ``{"config": {...}, "metadata": {...}, "environment":
{...}, "files": {...}}``, where the config is pairpod's partial config or a
ContainerSSH ``AppConfig`` (see :mod:`pairpod.auth.containerssh`).

Answers are checked strictly: a field of the wrong type, an unknown field,
a bad variable name or file path is an error.

Every problem (no connection, timeout, non-200, body too large, not JSON,
a field of the wrong type) raises :class:`WebhookError`, whose message is
fit for the log and never holds the password or a sensitive value. Callers
deny the login on it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiohttp

from pairpod.auth.containerssh import UnsupportedSettings, looks_like_containerssh, to_pairpod
from pairpod.auth.result import FileValue, LoginValues, MetadataValue, is_env_name
from pairpod.config import (
    Config,
    ConfigWebhookSettings,
    WebhookSettings,
    with_overrides,
)
from pairpod.errors import ConfigError
from pairpod.log import fields, get_logger

log = get_logger("auth.webhook")

DEFAULT_MAX_BYTES = 1024 * 1024

#: Config sections a config webhook may override; anything else is refused,
#: so a webhook can never change who may log in or where pairpod listens.
OVERRIDABLE_SECTIONS = frozenset({"backend", "docker", "kubernetes", "local", "security", "session"})

#: The connection fields ContainerSSH echoes back in its answers (ignored
#: beyond their types); anything else not named here is an unknown field.
_ECHOED_FIELDS = ("username", "remoteAddress", "connectionId", "clientVersion")
_AUTH_FIELDS = frozenset(
    {"success", "authenticatedUsername", "metadata", "environment", "files", *_ECHOED_FIELDS}
)
_CONFIG_FIELDS = frozenset(
    {"config", "authenticatedUsername", "metadata", "environment", "files", *_ECHOED_FIELDS}
)
MAX_FILES = 64
MAX_PATH = 4096


class WebhookError(Exception):
    """The webhook gave no usable answer; the message is the logged reason."""


@dataclass(frozen=True)
class ConnectionInfo:
    """The connection fields every ContainerSSH webhook request carries."""

    username: str
    remote_address: str  # "ip:port", "[v6]:port" for IPv6
    connection_id: str
    client_version: str

    def request(self) -> dict[str, Any]:
        """The common request body."""
        return {
            "username": self.username,
            "remoteAddress": self.remote_address,
            "connectionId": self.connection_id,
            "clientVersion": self.client_version,
            "metadata": {},
            "environment": {},
            "files": {},
        }


@dataclass(frozen=True)
class WebhookAnswer:
    """A parsed answer: auth fields (``success``...) plus environment and metadata."""

    success: bool = False
    authenticated_username: str | None = None
    environment: Mapping[str, MetadataValue] = field(default_factory=dict, repr=False)
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict, repr=False)
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)
    files: Mapping[str, FileValue] = field(default_factory=dict, repr=False)

    @property
    def values(self) -> LoginValues:
        """The metadata, environment and files of the answer."""
        return LoginValues(self.metadata, self.environment, self.files)


def format_address(host: str, port: int) -> str:
    """``ip:port``, bracketing IPv6 as Go's ``net.JoinHostPort`` does."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: Mapping[str, Any],
    *,
    attempt_timeout: float,
    retries: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backoff: float = 0.1,
) -> Any:
    """POST ``body`` as JSON and return the decoded answer.

    Retries (``retries`` more attempts, each with ``attempt_timeout``) only when
    another attempt could help: no connection, timeout, or a 5xx status.
    """
    last = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(backoff * attempt)  # a short pause, bounded by retries
        try:
            async with asyncio.timeout(attempt_timeout):
                async with session.post(url, json=body, allow_redirects=False) as response:
                    if response.status >= 500:
                        last = f"HTTP status {response.status}"
                        continue
                    if response.status != 200:
                        raise WebhookError(f"HTTP status {response.status}")
                    raw = await _read_capped(response, max_bytes)
        except TimeoutError:
            last = f"no answer within {attempt_timeout:g}s"
            continue
        except aiohttp.ClientConnectorError as error:
            last = f"cannot connect: {error.os_error.strerror or error.os_error}"
            continue
        except aiohttp.ClientError as error:
            last = f"{type(error).__name__}: {error}"
            continue
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise WebhookError(f"answer is not JSON ({error.__class__.__name__})") from None
    attempts = retries + 1
    raise WebhookError(f"{last} (after {attempts} attempt{'s' if attempts > 1 else ''})")


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    if response.content_length is not None and response.content_length > max_bytes:
        raise WebhookError(f"answer of {response.content_length} bytes is over {max_bytes}")
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > max_bytes:
            raise WebhookError(f"answer over {max_bytes} bytes")
    return bytes(body)


def _values(data: Mapping[str, Any], key: str, *, env_names: bool) -> dict[str, MetadataValue]:
    """Parse a ``{name: {"value": str, "sensitive": bool}}`` map (ContainerSSH's ``Value``)."""
    raw = data.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise WebhookError(f"{key} must be an object, got {type(raw).__name__}")
    parsed: dict[str, MetadataValue] = {}
    for name, item in raw.items():
        if env_names and not is_env_name(name):
            raise WebhookError(f"{key}: {name[:64]!r} is not a valid variable name")
        value, sensitive = _value_and_flag(item, f"{key}.{name[:64]}", "string")
        if "\0" in value:
            raise WebhookError(f"{key}.{name[:64]} holds a NUL character")
        parsed[name] = MetadataValue(value, sensitive)
    return parsed


def _value_and_flag(item: Any, where: str, kind: str) -> tuple[str, bool]:
    """``(value, sensitive)`` of one ``{"value": ..., "sensitive": bool}`` entry, checked."""
    if (
        not isinstance(item, dict)
        or set(item) - {"value", "sensitive"}
        or not isinstance(item.get("value"), str)
        or not isinstance(item.get("sensitive", False), bool)
    ):
        raise WebhookError(f"{where}: expected {{'value': {kind}, 'sensitive': bool}}")
    return item["value"], item.get("sensitive", False)


def _files(data: Mapping[str, Any]) -> dict[str, FileValue]:
    """Parse ``files``: ``{absolute path: {"value": base64, "sensitive": bool}}``."""
    raw = data.get("files")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise WebhookError(f"files must be an object, got {type(raw).__name__}")
    if len(raw) > MAX_FILES:
        raise WebhookError(f"files: {len(raw)} files, at most {MAX_FILES}")
    parsed: dict[str, FileValue] = {}
    for path, item in raw.items():
        shown = path[:64]
        parts = path.split("/")
        if (
            not path.startswith("/")
            or len(path) > MAX_PATH
            or "\0" in path
            or path.endswith("/")
            or any(part in (".", "..") for part in parts)
        ):
            raise WebhookError(f"files: {shown!r} is not an absolute, normalised file path")
        value, sensitive = _value_and_flag(item, f"files.{shown}", "base64")
        try:
            content = base64.b64decode(value, validate=True)
        except ValueError:
            raise WebhookError(f"files.{shown}: value is not base64") from None
        parsed[path] = FileValue(content, sensitive)
    return parsed


def _check_fields(data: Any, known: frozenset[str]) -> dict[str, Any]:
    """The answer as an object, with no unknown field and the echoed fields as strings."""
    if not isinstance(data, dict):
        raise WebhookError(f"answer must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - known)
    if unknown:
        raise WebhookError(f"unknown field(s) in answer: {[name[:64] for name in unknown[:8]]}")
    for name in _ECHOED_FIELDS:
        if data.get(name) is not None and not isinstance(data[name], str):
            raise WebhookError(f"{name} must be a string")
    who = data.get("authenticatedUsername")
    if who is not None and not isinstance(who, str):
        raise WebhookError("authenticatedUsername must be a string")
    if who is not None and (len(who) > 256 or not who.isprintable()):
        raise WebhookError("authenticatedUsername is not a usable name")
    return data


def parse_auth_answer(data: Any) -> WebhookAnswer:
    """Check an auth (or authz) answer field by field; raise WebhookError on anything wrong."""
    data = _check_fields(data, _AUTH_FIELDS)
    success = data.get("success")
    if not isinstance(success, bool):
        raise WebhookError("success must be true or false")
    return WebhookAnswer(
        success=success,
        authenticated_username=data.get("authenticatedUsername") or None,
        environment=_values(data, "environment", env_names=True),
        metadata=_values(data, "metadata", env_names=False),
        files=_files(data),
    )


def parse_config_answer(data: Any) -> WebhookAnswer:
    """Check a config webhook answer; the partial config is checked by :func:`apply_overrides`."""
    data = _check_fields(data, _CONFIG_FIELDS)
    config = data.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise WebhookError(f"config must be an object, got {type(config).__name__}")
    return WebhookAnswer(
        success=True,
        environment=_values(data, "environment", env_names=True),
        metadata=_values(data, "metadata", env_names=False),
        config=config,
        files=_files(data),
    )


def apply_overrides(base: Config, overrides: Mapping[str, Any], shape: str = "auto") -> Config:
    """Merge a webhook's partial config over ``base`` and validate it with the same model.

    ``shape`` is ``auth.config_webhook.format``: ``containerssh`` answers
    (or, with ``auto``, answers that look like one) are mapped first.
    Raises WebhookError naming the refused section or the invalid key path.
    """
    allowed = OVERRIDABLE_SECTIONS
    if shape == "containerssh" or (shape == "auto" and looks_like_containerssh(overrides)):
        try:
            overrides = to_pairpod(overrides, kubernetes_container=base.kubernetes.container)
        except UnsupportedSettings as error:
            raise WebhookError(f"ContainerSSH config: {error}") from None
        # security.maxSessions is ContainerSSH's per-connection channel limit.
        allowed = allowed | {"ssh"}
    refused = sorted(set(overrides) - allowed)
    if refused:
        raise WebhookError(
            f"config sections {refused} may not be overridden (allowed: {sorted(OVERRIDABLE_SECTIONS)})"
        )
    if not overrides:
        return base
    try:
        return with_overrides(base, dict(overrides), "config webhook")
    except ConfigError as error:
        raise WebhookError(f"invalid config: {error}") from None


def public_values(values: Mapping[str, MetadataValue]) -> dict[str, dict[str, Any]]:
    """The non-sensitive entries, in webhook form (sensitive ones never leave pairpod again)."""
    return {
        name: {"value": item.value, "sensitive": False} for name, item in values.items() if not item.sensitive
    }


def public_files(files: Mapping[str, FileValue]) -> dict[str, dict[str, Any]]:
    """The non-sensitive files, in webhook form (base64 values, as Go encodes ``[]byte``)."""
    return {
        path: {"value": base64.b64encode(item.content).decode("ascii"), "sensitive": False}
        for path, item in files.items()
        if not item.sensitive
    }


def authenticated_request(
    conn: ConnectionInfo, authenticated_username: str, values: LoginValues
) -> dict[str, Any]:
    """ContainerSSH's ``ConnectionAuthenticatedMetadata``: the body of authz and config requests."""
    body = conn.request()
    body["authenticatedUsername"] = authenticated_username
    body["metadata"] = public_values(values.metadata)
    body["environment"] = public_values(values.environment)
    body["files"] = public_files(values.files)
    return body


SettingsT = TypeVar("SettingsT", WebhookSettings, ConfigWebhookSettings)


class _WebhookClient(Generic[SettingsT]):
    """What both webhook clients hold: their settings, the HTTP session, a body cap."""

    def __init__(
        self,
        settings: SettingsT,
        session: Callable[[], aiohttp.ClientSession],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.settings: SettingsT = settings
        self._session = session
        self._max_bytes = max_bytes


class AuthWebhook(_WebhookClient[WebhookSettings]):
    """Client of a ContainerSSH-compatible authentication webhook."""

    async def password(self, conn: ConnectionInfo, password: str) -> WebhookAnswer:
        """Ask whether ``password`` is right for ``conn.username``."""
        body = conn.request()
        body["passwordBase64"] = base64.b64encode(password.encode()).decode("ascii")
        return await self._ask("password", body)

    async def pubkey(self, conn: ConnectionInfo, public_key: str) -> WebhookAnswer:
        """Ask whether ``public_key`` (``type base64``) may log in as ``conn.username``."""
        body = conn.request()
        body["publicKey"] = public_key
        return await self._ask("pubkey", body)

    async def authorize(
        self, conn: ConnectionInfo, authenticated_username: str, values: LoginValues
    ) -> WebhookAnswer:
        """Ask ``<url>/authz`` whether this authenticated login may go on (ContainerSSH's authz)."""
        return await self._ask("authz", authenticated_request(conn, authenticated_username, values))

    async def _ask(self, endpoint: str, body: dict[str, Any]) -> WebhookAnswer:
        data = await post_json(
            self._session(),
            f"{self.settings.url.rstrip('/')}/{endpoint}",
            body,
            attempt_timeout=self.settings.timeout,
            retries=self.settings.retries,
            max_bytes=self._max_bytes,
        )
        return parse_auth_answer(data)


class ConfigWebhook(_WebhookClient[ConfigWebhookSettings]):
    """Client of a ContainerSSH-compatible configuration webhook."""

    async def fetch(
        self, conn: ConnectionInfo, authenticated_username: str, values: LoginValues
    ) -> WebhookAnswer:
        """Ask for this connection's config overrides.

        The answer is not applied yet: see :func:`apply_overrides`.
        """
        body = authenticated_request(conn, authenticated_username, values)
        data = await post_json(
            self._session(),
            self.settings.url,
            body,
            attempt_timeout=self.settings.timeout,
            max_bytes=self._max_bytes,
        )
        answer = parse_config_answer(data)
        log.debug(
            "config_webhook.answer",
            extra=fields(conn=conn.connection_id, sections=",".join(sorted(answer.config))),
        )
        return answer
