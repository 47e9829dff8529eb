"""metav1.Status bodies and the error type that carries them.

The JSON shapes copy what a real API server sends, field for field, because
clients (kubectl, client-go, kubernetes_asyncio) branch on ``reason`` and
``code`` and print ``message`` verbatim.
"""

from __future__ import annotations

from typing import Any


def status_body(
    code: int,
    reason: str,
    message: str,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Failure metav1.Status, as the API server returns for an error."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def success_body(details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Success metav1.Status (what DELETE of a non-pod object answers)."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if details is not None:
        body["details"] = details
    return body


class ApiError(Exception):
    """An error the API answers with a metav1.Status body and its HTTP code."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        """The metav1.Status JSON object for this error."""
        return status_body(self.code, self.reason, self.message, self.details)


# The constructors below mirror k8s.io/apimachinery/pkg/api/errors, whose
# messages clients show to users unchanged.


def _named(resource: str, name: str, group: str) -> tuple[str, dict[str, Any]]:
    """How an error names the object: ``resource[.group]`` and its ``details``."""
    details: dict[str, Any] = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return (f"{resource}.{group}" if group else resource), details


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    """404 NotFound: ``pods "x" not found``."""
    qualified, details = _named(resource, name, group)
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', details)


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    """409 AlreadyExists: ``pods "x" already exists``."""
    qualified, details = _named(resource, name, group)
    return ApiError(409, "AlreadyExists", f'{qualified} "{name}" already exists', details)


def conflict(resource: str, name: str, group: str = "") -> ApiError:
    """409 Conflict: a write based on a stale resourceVersion."""
    qualified, details = _named(resource, name, group)
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        details,
    )


def invalid(kind: str, name: str, causes: list[dict[str, str]], group: str = "") -> ApiError:
    """422 Invalid, one cause per field error, as field.ErrorList renders it.

    Each cause is ``{"reason": "FieldValueRequired", "message": "Required value",
    "field": "spec.containers[0].image"}``; the top-level message joins them the
    way the API server does.
    """
    qualified = f"{kind}.{group}" if group else kind
    rendered = [f"{c['field']}: {c['message']}" for c in causes]
    summary = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    details: dict[str, Any] = {"name": name, "kind": kind, "causes": causes}
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, "BadRequest", message)


def method_not_allowed() -> ApiError:
    """405 MethodNotAllowed."""
    return ApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {}
    )


def gone(message: str) -> ApiError:
    """410 Expired (the reason real servers give for a compacted resourceVersion)."""
    return ApiError(410, "Expired", message)


def unauthorized() -> ApiError:
    """401 Unauthorized."""
    return ApiError(401, "Unauthorized", "Unauthorized")


def unsupported_media_type(content_type: str) -> ApiError:
    """415 UnsupportedMediaType."""
    return ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        f'application/json, application/yaml (got "{content_type}")',
    )


def page_not_found() -> ApiError:
    """The 404 for a path the server does not serve at all."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})
