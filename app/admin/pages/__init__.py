"""The console's pages, one module per page; each exposes `router` (see docs/admin.md).

Listed here rather than in `app/admin/__init__.py` so that a page module never shadows a
service module of the same name there (`app.admin.users` is the service, this `users` the
page).
"""

from app.admin.pages import account, audit_log, campaign_actions, dashboard, sign_in, users

ALL = (sign_in, account, dashboard, audit_log, campaign_actions, users)
"""Every page module, mounted in this order. Add new pages here."""
