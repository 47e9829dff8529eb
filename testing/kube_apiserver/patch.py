"""PATCH bodies: JSON patch, JSON merge patch, and strategic merge patch.

Strategic merge patch is approximated without schemas: lists of objects that
all carry the list's merge key (``name`` for containers, env, volumes...;
``mountPath``, ``containerPort``, ``port`` for the lists keyed so upstream)
merge element by element, other lists are replaced, and the directives
kubectl emits (``$patch``, ``$retainKeys``, ``$setElementOrder/``,
``$deleteFromPrimitiveList/``) are honoured. That covers the patches
``kubectl apply``, ``label``, ``annotate`` and ``patch`` send for ordinary
manifests.
"""

from __future__ import annotations

import copy
from typing import Any

from .status import ApiError, bad_request

# Merge keys of the lists upstream marks ``patchStrategy: merge``; looked up
# by field name, which is unambiguous for the resources this server stores.
_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "finalizers": "",  # a set of strings: merged, not replaced
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _merge_key_for(field: str, items: list[Any]) -> str | None:
    key = _MERGE_KEYS.get(field)
    if key is None or key == "":
        return key
    # Service ports are keyed by "port", container ports by "containerPort".
    if (
        field == "ports"
        and items
        and all(isinstance(i, dict) and "port" in i and "containerPort" not in i for i in items)
    ):
        return "port"
    return key


def _strategic_list(field: str, target: list[Any], patch: list[Any]) -> list[Any]:
    key = _merge_key_for(field, patch)
    if key == "":
        # A set of primitives (finalizers): union, order of the target first.
        merged = list(target)
        merged.extend(item for item in patch if item not in merged)
        return merged
    if key is None or not all(isinstance(item, dict) for item in patch):
        return [item for item in copy.deepcopy(patch) if not _is_directive_item(item)]
    result = [copy.deepcopy(item) for item in target if isinstance(item, dict)]
    for item in patch:
        directive = item.get("$patch")
        if directive == "replace":
            return [i for i in copy.deepcopy(patch) if i.get("$patch") != "replace"]
        match_index = next(
            (i for i, existing in enumerate(result) if existing.get(key) == item.get(key)), None
        )
        if directive == "delete":
            if match_index is not None:
                del result[match_index]
            continue
        if match_index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[match_index] = strategic_merge_patch(result[match_index], item)
    return result


def _is_directive_item(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == {"$patch"}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch without schemas (see the module docstring)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _strategic_list(key, result[key], value)
        elif isinstance(value, list):
            result[key] = [
                strategic_merge_patch({}, v) if isinstance(v, dict) else v
                for v in value
                if not _is_directive_item(v)
            ]
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    if isinstance(retain, list):
        for key in list(result):
            if key not in retain:
                del result[key]
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"the JSON pointer {path!r} does not start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; a failing ``test`` or a bad path is a 422 as upstream."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be an array of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        try:
            kind = op["op"]
            parts = _pointer(op["path"])
            if kind in ("add", "replace", "test"):
                value = copy.deepcopy(op["value"])
            if kind in ("move", "copy"):
                source = _pointer(op["from"])
                value = copy.deepcopy(_walk(doc, source))
                if kind == "move":
                    doc = _remove(doc, source)
                kind = "add"
            if kind == "test":
                if _walk(doc, parts) != value:
                    raise ApiError(422, "Invalid", f"testing value {op['path']} failed")
                continue
            if kind == "remove":
                doc = _remove(doc, parts)
                continue
            if not parts:
                doc = value
                continue
            parent = _walk(doc, parts[:-1])
            last = parts[-1]
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, value)
                else:
                    parent[index] = value
            elif isinstance(parent, dict):
                if kind == "replace" and last not in parent:
                    raise KeyError(last)
                parent[last] = value
            else:
                raise KeyError(last)
        except (KeyError, IndexError, ValueError, TypeError) as error:
            raise ApiError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: {error}",
            ) from None
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return None
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        del parent[int(last)]
    else:
        del parent[last]
    return doc
