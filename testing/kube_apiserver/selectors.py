"""Label and field selectors: parsing and matching, with the API server's grammar.

Label selectors (``k8s.io/apimachinery/pkg/labels``): comma-separated
requirements, each one of ``key``, ``!key``, ``key=v``, ``key==v``,
``key!=v``, ``key in (a,b)``, ``key notin (a,b)``, ``key>n``, ``key<n``.
``!=`` and ``notin`` also match objects without the key, as upstream.

Field selectors (``k8s.io/apimachinery/pkg/fields``): ``path=v``, ``path==v``,
``path!=v`` with backslash escapes, over a per-resource set of supported
fields; anything else is the API server's 400 "field label not supported".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .status import bad_request

# A label key is an optional DNS-subdomain prefix and a name; a value may be empty.
_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

# Tokens of the label selector lexer; identifiers stop at any operator character.
_TOKEN = re.compile(r"\s*(?:(?P<op>==|!=|=|!|>|<|\(|\)|,)|(?P<ident>[^\s=!<>(),]+))")


@dataclass(frozen=True)
class Requirement:
    """One label requirement: ``key <operator> values``."""

    key: str
    operator: str  # exists, !, =, !=, in, notin, gt, lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies this requirement."""
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator in ("=", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            return not present or value not in self.values
        if not present:
            return False
        try:
            number = int(value or "")
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.operator == "gt" else number < bound


@dataclass(frozen=True)
class LabelSelector:
    """A conjunction of label requirements; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether every requirement holds for ``labels``."""
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _lex(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise bad_request(f"unable to parse requirement: unexpected character at {text[pos:]!r}")
        if match.group("op") is not None:
            tokens.append(("op", match.group("op")))
        else:
            tokens.append(("ident", match.group("ident")))
        pos = match.end()
    return tokens


def _check_key(key: str) -> None:
    if not _KEY.match(key) or len(key.split("/")[-1]) > 63:
        raise bad_request(
            f"unable to parse requirement: values[0][{key}]: Invalid value: {key!r}: "
            "name part must consist of alphanumeric characters, '-', '_' or '.'"
        )


def _check_value(key: str, value: str) -> None:
    if not _VALUE.match(value):
        raise bad_request(
            f"unable to parse requirement: values[0][{key}]: Invalid value: {value!r}: "
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.'"
        )


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse a ``labelSelector`` query value; raise a 400 ApiError when malformed."""
    if not text or not text.strip():
        return LabelSelector()
    tokens = _lex(text)
    requirements: list[Requirement] = []
    i = 0

    def expect_ident(what: str) -> str:
        nonlocal i
        if i >= len(tokens) or tokens[i][0] != "ident":
            found = tokens[i][1] if i < len(tokens) else ""
            raise bad_request(f"unable to parse requirement: found '{found}', expected: {what}")
        value = tokens[i][1]
        i += 1
        return value

    while i < len(tokens):
        negated = False
        if tokens[i] == ("op", "!"):
            negated = True
            i += 1
        key = expect_ident("identifier")
        _check_key(key)
        if negated:
            requirements.append(Requirement(key, "!"))
        elif i >= len(tokens) or tokens[i] == ("op", ","):
            requirements.append(Requirement(key, "exists"))
        else:
            kind, word = tokens[i]
            i += 1
            if kind == "op" and word in ("=", "==", "!="):
                # An empty value is legal: ``key=`` matches an empty label.
                if i < len(tokens) and tokens[i][0] == "ident":
                    value = tokens[i][1]
                    i += 1
                else:
                    value = ""
                _check_value(key, value)
                requirements.append(Requirement(key, "!=" if word == "!=" else "=", (value,)))
            elif kind == "op" and word in (">", "<"):
                value = expect_ident("integer")
                if not re.fullmatch(r"-?\d+", value):
                    raise bad_request(
                        f"unable to parse requirement: for 'Gt', 'Lt' operators, the value "
                        f"must be an integer: {value!r}"
                    )
                requirements.append(Requirement(key, "gt" if word == ">" else "lt", (value,)))
            elif kind == "ident" and word in ("in", "notin"):
                if i >= len(tokens) or tokens[i] != ("op", "("):
                    raise bad_request("unable to parse requirement: found '', expected: '('")
                i += 1
                values: list[str] = []
                while True:
                    if i >= len(tokens):
                        raise bad_request("unable to parse requirement: found '', expected: ')'")
                    kind2, text2 = tokens[i]
                    if (kind2, text2) == ("op", ")"):
                        i += 1
                        break
                    if (kind2, text2) == ("op", ","):
                        i += 1
                        continue
                    if kind2 != "ident":
                        raise bad_request(
                            f"unable to parse requirement: found '{text2}', expected: ',', ')' or identifier"
                        )
                    _check_value(key, text2)
                    values.append(text2)
                    i += 1
                if not values:
                    # ``in ()`` parses upstream as a set holding the empty value.
                    values = [""]
                requirements.append(Requirement(key, word, tuple(values)))
            else:
                raise bad_request(
                    f"unable to parse requirement: found '{word}', expected: in, notin, =, ==, !=, gt, lt"
                )
        if i < len(tokens):
            if tokens[i] != ("op", ","):
                raise bad_request(f"unable to parse requirement: found '{tokens[i][1]}', expected: ','")
            i += 1
            if i >= len(tokens):
                raise bad_request("unable to parse requirement: found '', expected: identifier")
    return LabelSelector(tuple(requirements))


# --- field selectors --------------------------------------------------------


@dataclass(frozen=True)
class FieldRequirement:
    """One field requirement: ``path = value`` or ``path != value``."""

    path: str
    equal: bool
    value: str


@dataclass(frozen=True)
class FieldSelector:
    """A conjunction of field requirements over an object's selectable fields."""

    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, fields: Mapping[str, str]) -> bool:
        """Whether every requirement holds for the object's selectable ``fields``."""
        for req in self.requirements:
            actual = fields.get(req.path, "")
            if (actual == req.value) != req.equal:
                return False
        return True

    def exact_name(self) -> str | None:
        """The name this selector pins with ``metadata.name=<n>``, if any."""
        for req in self.requirements:
            if req.path == "metadata.name" and req.equal:
                return req.value
        return None


def _split_unescaped(text: str, separator: str) -> list[str]:
    """Split on ``separator`` where it is not backslash-escaped."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    out: list[str] = []
    escaped = False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise bad_request(f"invalid field selector: invalid escape sequence: \\{char}")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",=":
            raise bad_request(f"invalid field selector: unescaped {char!r} in value")
        else:
            out.append(char)
    if escaped:
        raise bad_request("invalid field selector: invalid escape sequence at end of value")
    return "".join(out)


def _split_field_term(part: str, text: str) -> tuple[str, bool, str]:
    """One ``path<op>value`` term as (path, is-equality, raw value)."""
    for operator, equal in (("!=", False), ("==", True), ("=", True)):
        index = part.find(operator)
        if index > 0:
            return part[:index].strip(), equal, part[index + len(operator) :]
    raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")


def parse_field_selector(text: str | None, supported: frozenset[str]) -> FieldSelector:
    """Parse a ``fieldSelector`` query value against the resource's supported fields."""
    if not text or not text.strip():
        return FieldSelector()
    requirements: list[FieldRequirement] = []
    for part in _split_unescaped(text, ","):
        if not part:
            continue
        path, equal, raw = _split_field_term(part, text)
        if path not in supported:
            raise bad_request(f"field label not supported: {path}")
        requirements.append(FieldRequirement(path, equal, _unescape(raw)))
    return FieldSelector(tuple(requirements))


# Selectable fields per resource, as the registries of the real server define them.
_COMMON = frozenset({"metadata.name", "metadata.namespace"})
FIELD_SETS: dict[str, frozenset[str]] = {
    "pods": _COMMON
    | {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "namespaces": _COMMON | {"status.phase"},
    "secrets": _COMMON | {"type"},
    "nodes": _COMMON | {"spec.unschedulable"},
    "events": _COMMON
    | {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
}


def _dig(obj: Mapping[str, Any], path: str) -> Any:
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


FieldsOf = Callable[[Mapping[str, Any]], dict[str, str]]


def field_getter(plural: str) -> tuple[frozenset[str], FieldsOf]:
    """The supported fields of a resource and a function giving an object's values."""
    supported = FIELD_SETS.get(plural, _COMMON)

    def fields(obj: Mapping[str, Any]) -> dict[str, str]:
        values: dict[str, str] = {}
        for path in supported:
            value = _dig(obj, path)
            if isinstance(value, bool):
                values[path] = "true" if value else "false"
            elif value is None:
                values[path] = ""
            else:
                values[path] = str(value)
        return values

    return supported, fields


__all__ = [
    "FieldSelector",
    "LabelSelector",
    "Requirement",
    "field_getter",
    "parse_field_selector",
    "parse_label_selector",
]
