"""HTTP-level details of the API: bodies, content negotiation, continue tokens."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import yaml
from aiohttp import web

from .status import ApiError, bad_request, unsupported_media_type

Obj = dict[str, Any]


def json_response(body: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    """A compact JSON response, with ``Warning`` headers if any."""
    response = web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )
    for warning in warnings or []:
        response.headers.add("Warning", warning)
    return response


def strip_type_meta(obj: Obj) -> Obj:
    """An object without kind and apiVersion."""
    # Items of a typed list carry no kind/apiVersion on the wire.
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def negotiate(request: web.Request) -> tuple[str, str]:
    """What representation the client asked for: (``json``|``table``|``partial``, include)."""
    include = request.query.get("includeObject", "Metadata")
    if include not in ("None", "Metadata", "Object"):
        raise bad_request(f'includeObject: Unsupported value: "{include}"')
    accept = request.headers.get("Accept", "")
    if not accept:
        return "json", include
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";")]
        media, params = pieces[0], dict(p.split("=", 1) for p in pieces[1:] if "=" in p)
        if media not in ("application/json", "*/*", "application/*", "application/yaml"):
            continue
        shape = params.get("as")
        if shape == "Table" and params.get("g") == "meta.k8s.io":
            return "table", include
        if shape in ("PartialObjectMetadata", "PartialObjectMetadataList"):
            return "partial", include
        if shape is None:
            return "json", include
    raise ApiError(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json, application/yaml",
    )


def encode_continue(revision: int, key: tuple[str, str]) -> str:
    """A list continue token: the list's revision and the last key returned."""
    token = json.dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": list(key)})
    return base64.urlsafe_b64encode(token.encode()).decode()


def decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    """The revision and start key of a continue token; 400 when it is not one of ours."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), (str(data["start"][0]), str(data["start"][1]))
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        raise bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        ) from None


async def read_body(request: web.Request) -> Any:
    """The decoded request body (JSON or YAML), or None when empty."""
    raw = await request.read()
    content_type = request.content_type
    if not raw:
        return None
    try:
        if content_type in ("application/yaml", "application/apply-patch+yaml"):
            return yaml.safe_load(raw)
        if content_type.startswith("application/vnd.kubernetes.protobuf"):
            raise unsupported_media_type(content_type)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as error:
        raise bad_request(f"error decoding the request body: {error}") from None
