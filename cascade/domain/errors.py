"""Domain errors, each carrying the HTTP status it maps to.

The engine never imports aiohttp: `cascade.http` turns these into the JSON
error body in one place. Messages name the offending value and the rule.
"""

from __future__ import annotations

__all__ = [
    "AlreadyFinished",
    "CascadeError",
    "Conflict",
    "Detail",
    "InvalidInput",
    "NotFound",
    "Overloaded",
    "TemplateInvalid",
]

Detail = tuple[str, str]  # (JSON path, message)


class CascadeError(Exception):
    status_hint = 500
    code = "internal"

    def __init__(self, message: str, details: list[Detail] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[Detail] = details or []


class InvalidInput(CascadeError):
    status_hint = 422
    code = "invalid"


class TemplateInvalid(InvalidInput):
    code = "template_invalid"


class NotFound(CascadeError):
    status_hint = 404
    code = "not_found"


class Conflict(CascadeError):
    status_hint = 409
    code = "conflict"


class AlreadyFinished(Conflict):
    code = "already_finished"


class Overloaded(CascadeError):
    status_hint = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
