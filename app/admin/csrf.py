"""CSRF tokens for every console form: an HMAC bound to the browser's session.

Signed in, the token is HMAC(secret, session token hash): it changes with each session and
dies with it. Before sign-in (the sign-in form itself) it is bound to a random pre-session
cookie instead. Forms carry it as the hidden field `csrf`; scripts send `X-CSRF-Token`.
`SameSite=Strict` cookies already keep cross-site posts out; the token is the second lock.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

FIELD = "csrf"
HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token(secret: str, purpose: str, bound: str) -> str:
    """The form token for `purpose` (`session` or `sign-in`) bound to `bound`."""
    message = f"admin-csrf:{purpose}:{bound}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


async def submitted(request: Request) -> str:
    """The token a request carries: the header, else the form field (the form is cached)."""
    if header := request.headers.get(HEADER):
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        field = (await request.form()).get(FIELD)
        return field if isinstance(field, str) else ""
    return ""


def matches(expected: str, given: str) -> bool:
    """Constant-time comparison of two tokens."""
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode()[:200])
