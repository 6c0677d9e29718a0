"""Domain errors: services raise these, the API maps them to problem documents."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of the errors a caller can act on; `status` is the HTTP status it maps to."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class NotFound(DomainError):
    """The thing named does not exist."""

    status = 404
    title = "Not found"


class Conflict(DomainError):
    """The request clashes with what is stored (a duplicate, a state that forbids it)."""

    status = 409
    title = "Conflict"


class Invalid(DomainError):
    """The request is well-formed but its content is not acceptable."""

    status = 422
    title = "Unprocessable content"


class TooLarge(DomainError):
    """The request body or upload exceeds a limit."""

    status = 413
    title = "Content too large"
