"""Query parameters the way the API server reads them.

Booleans follow Go's ``strconv.ParseBool`` (``true``, ``True``, ``1``, ``t``...),
which is why kubernetes_asyncio's ``watch=True`` and kubectl's ``watch=true``
both work upstream; integers must be integers; ``dryRun`` only knows ``All``.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import MultiMapping

from .status import bad_request

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(query: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A boolean query parameter; 400 BadRequest when it is not one."""
    raw = query.get(name)
    if raw is None:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE or raw == "":
        return False
    raise bad_request(f'strconv.ParseBool: parsing "{raw}": invalid syntax')


def parse_int(query: Mapping[str, str], name: str) -> int | None:
    """An integer query parameter, or None when absent; 400 when malformed."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f'strconv.ParseInt: parsing "{raw}": invalid syntax') from None


def parse_dry_run(query: MultiMapping[str]) -> bool:
    """Whether ``dryRun=All`` was asked for; any other value is rejected as upstream."""
    values = query.getall("dryRun", [])
    for value in values:
        if value != "All":
            raise bad_request(f'Invalid dryRun value: "{value}"; supported values: "All"')
    return bool(values)


def parse_field_validation(query: Mapping[str, str]) -> str:
    """The ``fieldValidation`` directive (Ignore, Warn, Strict)."""
    value = query.get("fieldValidation", "")
    if value not in ("", "Ignore", "Warn", "Strict"):
        raise bad_request(
            f'fieldValidation parameter unsupported: "{value}". Allowed values are: '
            '"Ignore", "Warn", "Strict"'
        )
    return value or "Warn"
