"""Just enough OpenAPI v3 for kubectl's field-validation check.

Before ``create -f`` or ``apply``, kubectl (>= 1.27) asks whether the server
supports the ``fieldValidation`` query parameter: it reads ``/openapi/v3``,
then the document of the object's group/version, and looks for a PATCH
operation tagged with the object's group-version-kind that lists the
parameter. Without a document kubectl refuses to send the object unless
``--validate=false``. These documents carry those operations and no schemas.

OpenAPI v2 is read by kubectl only to validate a ``kind: List`` on the client
side; it wants protobuf, and a document without definitions makes it skip
validation of each item, which is what it does for unknown kinds.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import Registry, ResourceType

_PATCH_PARAMETERS = [
    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
    {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": True}},
]


def gv_path(group: str, version: str) -> str:
    """``api/v1`` or ``apis/<group>/<version>``: the key of a document in the v3 index."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _item_path(rtype: ResourceType) -> str:
    prefix = f"/{gv_path(rtype.group, rtype.version)}"
    if rtype.namespaced:
        return f"{prefix}/namespaces/{{namespace}}/{rtype.plural}/{{name}}"
    return f"{prefix}/{rtype.plural}/{{name}}"


def gv_document(registry: Registry, group: str, version: str) -> dict[str, Any]:
    """The OpenAPI v3 document of one group/version."""
    paths: dict[str, Any] = {}
    for rtype in registry.in_group_version(group, version):
        gvk = {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}
        paths[_item_path(rtype)] = {
            "patch": {
                "description": f"partially update the specified {rtype.kind}",
                "operationId": f"patch{rtype.kind}",
                "parameters": _PATCH_PARAMETERS,
                "requestBody": {
                    "content": {
                        "application/apply-patch+yaml": {"schema": {"type": "object"}},
                        "application/json-patch+json": {"schema": {"type": "object"}},
                        "application/merge-patch+json": {"schema": {"type": "object"}},
                        "application/strategic-merge-patch+json": {"schema": {"type": "object"}},
                    },
                    "required": True,
                },
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
            },
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": {}},
    }


# Clients ask for "...spec.v2@v1.0+protobuf"; servers answer with this spelling,
# which Go's mime parser accepts.
V2_MEDIA_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _pb_bytes(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    return varint(field << 3 | 2) + varint(len(payload)) + payload


def v2_document() -> bytes:
    """An OpenAPI v2 ``Document`` (gnostic protobuf): swagger and info, no definitions."""
    info = _pb_bytes(1, b"Kubernetes") + _pb_bytes(2, b"unversioned")
    return _pb_bytes(1, b"2.0") + _pb_bytes(2, info)


def index(registry: Registry) -> dict[str, Any]:
    """GET /openapi/v3: where each group/version's document lives, with a content hash."""
    paths: dict[str, Any] = {}
    for group, version in registry.group_versions():
        document = json.dumps(gv_document(registry, group, version), sort_keys=True).encode()
        digest = hashlib.sha512(document).hexdigest()[:128].upper()
        key = gv_path(group, version)
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}
