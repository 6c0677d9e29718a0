"""Form tokens: a signed hidden field that binds a form post to the page that served it.

`issued.mac` where the MAC covers the form's purpose, the page's link token (so a token
lifted from one subscriber's page is useless on another's), any state the form carries
(e.g. the lists an undo restores) and the time it was issued. Stateless, no cookie needed;
it expires after FORM_LIFETIME. The one-click POST of RFC 8058 does not use it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from starlette.datastructures import FormData
from starlette.requests import Request

FIELD = "csrf"
FORM_LIFETIME = 24 * 3600
MAX_FIELD = 2000
"""Longest value accepted for any form field; longer posts are refused."""


def _mac(secret: str, purpose: str, bound: str, state: str, issued: int) -> str:
    message = f"form:{purpose}:{bound}:{state}:{issued}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def issue(secret: str, purpose: str, bound: str, state: str = "", now: float | None = None) -> str:
    """A form token for `purpose` on the page named by `bound`, carrying `state`."""
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_mac(secret, purpose, bound, state, issued)}"


def valid(
    secret: str, purpose: str, bound: str, value: str, state: str = "", now: float | None = None
) -> bool:
    """Whether `value` is a genuine, unexpired token for this form and state."""
    issued_text, _, mac = value.partition(".")
    if not ascii_digits(issued_text, 12) or not mac.isascii():
        return False
    issued = int(issued_text)
    age = (time.time() if now is None else now) - issued
    if not 0 <= age <= FORM_LIFETIME:
        return False
    return hmac.compare_digest(mac, _mac(secret, purpose, bound, state, issued))


def ascii_digits(value: str, longest: int) -> bool:
    """Up to `longest` ASCII digits: `str.isdigit` also accepts `²`, which `int` refuses."""
    return 0 < len(value) <= longest and value.isascii() and value.isdigit()


def text(form: FormData, name: str) -> str:
    """A text field ('' when missing or a file upload)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


def oversized(form: FormData) -> bool:
    """Whether any field is longer than MAX_FIELD or there are absurdly many."""
    items = form.multi_items()
    return len(items) > 200 or any(isinstance(v, str) and len(v) > MAX_FIELD for _, v in items)


async def checked(
    request: Request,
    secret: str,
    purpose: str,
    bound: str,
    *,
    state_field: str | None = None,
    max_fields: int = 20,
) -> FormData | None:
    """The posted form if it is of sane size and carries a genuine token for `purpose` on
    the page `bound` (and, with `state_field`, for that field's value); None otherwise."""
    form = await request.form(max_files=0, max_fields=max_fields)
    state = text(form, state_field) if state_field else ""
    if oversized(form) or not valid(secret, purpose, bound, text(form, FIELD), state):
        return None
    return form
