"""The console's menu: each entry is shown only to roles whose scopes include its scope."""

from __future__ import annotations

from dataclasses import dataclass

from app.admin.roles import AUDIT_READ, USERS_MANAGE
from app.core.api_keys import MANAGE_SCOPE


@dataclass(frozen=True)
class NavItem:
    """One menu entry."""

    label: str
    path: str
    scope: str
    """The scope a role needs to see the entry; "" for every signed-in user."""


NAV: list[NavItem] = [
    NavItem("Dashboard", "/admin/", "campaigns:read"),
    NavItem("Lists", "/admin/lists", "lists:read"),
    NavItem("Subscribers", "/admin/subscribers", "subscribers:read"),
    NavItem("Templates", "/admin/templates", "templates:read"),
    NavItem("Campaigns", "/admin/campaigns", "campaigns:read"),
    NavItem("Messages", "/admin/messages", "messages:read"),
    NavItem("Bounces", "/admin/bounces", "bounces:read"),
    NavItem("Suppressions", "/admin/suppressions", "suppressions:read"),
    NavItem("Webhooks", "/admin/webhooks", "webhooks:read"),
    NavItem("MTA queue", "/admin/queue", "queue:read"),
    NavItem("Audit log", "/admin/audit", AUDIT_READ),
    NavItem("Users", "/admin/users", USERS_MANAGE),
    NavItem("API keys", "/admin/api-keys", MANAGE_SCOPE),
    NavItem("Account", "/admin/account", ""),
]
"""Pages append their entry here when they are registered (see docs/admin.md)."""
