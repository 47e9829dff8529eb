"""A ContainerSSH-protocol webhook server on loopback that reads requests strictly.

It parses every request by ContainerSSH's own field names and types (from
its ``metadata``, ``auth`` and ``config`` packages): the connection fields
``username``, ``remoteAddress`` (``ip:port``), ``connectionId``,
``clientVersion``, ``metadata`` / ``environment`` (``{name: {"value": str,
"sensitive": bool}}``) and ``files`` (``{path: {"value": base64, "sensitive":
bool}}``); ``passwordBase64`` for ``/password``, ``publicKey`` (an
authorized_keys line) for ``/pubkey``, ``authenticatedUsername`` for
``/authz`` and ``/config``. A request with an unknown field, a missing one
or a wrong type gets HTTP 400, and its problem is kept in ``problems`` for
the test to assert on.

Answers are replayed as given: ``auth_answers[user]`` is merged into
``{"success": true}`` for an accepted login, ``authz[user]`` is the whole
authz answer, ``config_answers[user]`` the whole config answer.

:func:`go_config_answer` builds a config answer the way ContainerSSH's Go
library sends one: the whole ``AppConfig`` (every section, empty ones
included, as in ``tests/data/containerssh_appconfig_zero.json``, derived
field by field from the library's struct definitions and JSON tags) with
the connection fields of a zero ``ConnectionAuthenticatedMetadata`` beside it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.http_peers import Peer

_ZERO_APPCONFIG = Path(__file__).parent.parent / "data" / "containerssh_appconfig_zero.json"

_PENDING = {"username", "remoteAddress", "connectionId", "clientVersion"}
_OPTIONAL = {"metadata", "environment", "files"}
_ENDPOINT_FIELDS = {
    "/password": {"passwordBase64"},
    "/pubkey": {"publicKey"},
    "/authz": {"authenticatedUsername"},
    "/config": {"authenticatedUsername"},
}

#: Docker's ``container.Config`` as Go marshals it (every field, by its Go name).
DOCKER_CONTAINER_CONFIG: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "User": "",
    "AttachStdin": False,
    "AttachStdout": False,
    "AttachStderr": False,
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "Env": None,
    "Cmd": None,
    "Image": "",
    "Volumes": None,
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": None,
}


def go_config_answer(**changes: Any) -> dict[str, Any]:
    """A config answer as ContainerSSH's Go library marshals it, with ``changes`` applied.

    ``changes`` map dotted paths inside ``config`` to values, e.g.
    ``{"docker.execution.container": {...}}``.
    """
    config = copy.deepcopy(json.loads(_ZERO_APPCONFIG.read_text())["config"])
    for path, value in changes.items():
        target = config
        *parents, last = path.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    return {
        "remoteAddress": "<nil>:0",
        "connectionId": "",
        "clientVersion": "",
        "username": "",
        "config": config,
    }


def _problems(path: str, body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["body is not an object"]
    required = _PENDING | _ENDPOINT_FIELDS[path]
    problems = [f"missing {name}" for name in sorted(required - set(body))]
    problems += [f"unknown field {name}" for name in sorted(set(body) - required - _OPTIONAL)]
    for name in required:
        if name in body and not isinstance(body[name], str):
            problems.append(f"{name} is not a string")
    host, _, port = str(body.get("remoteAddress", "")).rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        assert 0 <= int(port) <= 65535
    except (ValueError, AssertionError):
        problems.append(f"remoteAddress {body.get('remoteAddress')!r} is not ip:port")
    for name in ("metadata", "environment", "files"):
        values = body.get(name, {})
        if not isinstance(values, dict):
            problems.append(f"{name} is not an object")
            continue
        for key, item in values.items():
            if not isinstance(item, dict) or set(item) != {"value", "sensitive"}:
                problems.append(f"{name}.{key} is not {{value, sensitive}}")
            elif not isinstance(item["value"], str) or not isinstance(item["sensitive"], bool):
                problems.append(f"{name}.{key} has wrong types")
            elif name == "files":
                try:
                    base64.b64decode(item["value"], validate=True)
                except binascii.Error:
                    problems.append(f"files.{key} is not base64")
    if path == "/password":
        try:
            base64.b64decode(str(body.get("passwordBase64")), validate=True)
        except binascii.Error:
            problems.append("passwordBase64 is not base64")
    if path == "/pubkey" and len(str(body.get("publicKey", "")).split(" ")) != 2:
        problems.append("publicKey is not an authorized_keys line (type base64)")
    return problems


class ContainerSSHPeer(Peer):
    """ContainerSSH's auth (``/password``, ``/pubkey``, ``/authz``) and config (``/config``) servers."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.passwords: dict[str, str] = {}
        self.pubkeys: dict[str, set[str]] = {}  # authorized_keys lines (type base64)
        self.auth_answers: dict[str, dict[str, Any]] = {}
        self.authz: dict[str, dict[str, Any]] = {}
        self.config_answers: dict[str, dict[str, Any]] = {}
        for path in _ENDPOINT_FIELDS:
            self.app.router.add_post(path, self._serve)

    def requests_to(self, path: str) -> list[dict[str, Any]]:
        """The bodies of the requests made to ``path``."""
        return [body for seen, body in self.requests if seen == path]

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        await self.note(request.path, body)
        problems = _problems(request.path, body)
        if problems:
            self.problems += [f"{request.path}: {p}" for p in problems]
            return web.json_response({"error": problems}, status=400)
        user = body["username"]
        if request.path == "/config":
            return web.json_response(self.config_answers.get(user, go_config_answer()))
        if request.path == "/authz":
            return web.json_response(self.authz.get(user, {"success": False}))
        if request.path == "/password":
            given = base64.b64decode(body["passwordBase64"]).decode()
            ok = self.passwords.get(user) == given
        else:
            ok = body["publicKey"] in self.pubkeys.get(user, set())
        answer: dict[str, Any] = {"success": ok}
        if ok:
            answer.update(self.auth_answers.get(user, {}))
        return web.json_response(answer)


@pytest.fixture(name="peer")
async def containerssh_peer() -> AsyncIterator[ContainerSSHPeer]:
    """A started :class:`ContainerSSHPeer` (import this fixture into a test module to use it)."""
    server = ContainerSSHPeer()
    await server.start()
    yield server
    await server.stop()
