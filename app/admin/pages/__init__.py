"""The console's pages, one module per page; each exposes `router` (see docs/admin.md).

Listed here rather than in `app/admin/__init__.py` so that a page module never shadows a
service module of the same name there (`app.admin.users` is the service, this `users` the
page).
"""

from app.admin.pages import (
    account,
    api_keys,
    audit_log,
    campaign_actions,
    campaign_report,
    campaigns,
    dashboard,
    deliverability,
    imports,
    lists,
    messages,
    mta_queue,
    sign_in,
    subscribers,
    templates,
    users,
    webhooks,
)

ALL = (
    sign_in,
    account,
    dashboard,
    audit_log,
    lists,
    subscribers,
    imports,
    templates,
    campaigns,  # before campaign_actions: its /campaigns/{id}/{action} would shadow /send
    campaign_report,
    campaign_actions,
    deliverability,
    messages,
    mta_queue,
    webhooks,
    users,
    api_keys,
)
"""Every page module, mounted in this order. Add new pages here."""
