"""Console roles as API-key scopes: one vocabulary for what a key and a person may do.

viewer reads everything; marketer also writes lists, subscribers, templates and campaigns;
admin holds the `admin` scope (everything) except managing console users; owner holds all.
Console-only scopes (`users:manage`, `audit:read`) are not API-key scopes.
"""

from __future__ import annotations

from app.core import api_keys
from app.models import AdminRole

USERS_MANAGE = "users:manage"
AUDIT_READ = "audit:read"
CONSOLE_SCOPES = frozenset({USERS_MANAGE, AUDIT_READ})

_READ = [f"{resource}:read" for resource in api_keys.RESOURCES] + list(api_keys.READ_ONLY_SCOPES)
_MARKETER_WRITE = ["lists:write", "subscribers:write", "templates:write", "campaigns:write"]

ROLE_SCOPES: dict[AdminRole, frozenset[str]] = {
    AdminRole.viewer: frozenset(_READ),
    AdminRole.marketer: frozenset(_READ + _MARKETER_WRITE),
    AdminRole.admin: frozenset({"admin", AUDIT_READ}),
    AdminRole.owner: frozenset({"admin", AUDIT_READ, USERS_MANAGE}),
}


def allows(role: AdminRole, scope: str) -> bool:
    """Whether `role` may do what `scope` names (console scopes are granted only by name)."""
    scopes = ROLE_SCOPES[role]
    if scope in CONSOLE_SCOPES:
        return scope in scopes
    return api_keys.allows(sorted(scopes), scope)
