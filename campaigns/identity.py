"""Names derived from a ledger row: Message-ID, VERP return path and link tokens.

All are deterministic (the same row always yields the same Message-ID, so a resubmission
after a crash can be recognised) and HMAC-signed (nobody can forge one for another row).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_MAC_BYTES = 6
_MESSAGE_ID = re.compile(r"^\s*<([a-z])(\d{1,18})\.([a-z2-7]{1,20})@[^<>\s]+>\s*$")


def _mac(secret: str, purpose: str, payload: str, size: int = _MAC_BYTES) -> str:
    digest = hmac.new(secret.encode(), f"{purpose}:{payload}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:size]).decode().rstrip("=").lower()


def message_id(secret: str, ledger_id: int, hostname: str, kind: str = "c") -> str:
    """`<c123.mac@host>`: unique per ledger row, the same on every resubmission."""
    return f"<{kind}{ledger_id}.{_mac(secret, 'mid', f'{kind}{ledger_id}')}@{hostname}>"


def parse_message_id(secret: str, value: str) -> tuple[str, int] | None:
    """(kind, ledger id) for a genuine Warta Message-ID, None for any other or a forgery."""
    match = _MESSAGE_ID.match(value)
    if match is None:
        return None
    kind, number, mac = match.groups()
    if not hmac.compare_digest(mac, _mac(secret, "mid", f"{kind}{number}")):
        return None
    return kind, int(number)


def verp_address(secret: str, ledger_id: int, bounce_domain: str, kind: str = "c") -> str:
    """`bounces+c123-mac@domain`: the envelope sender that attributes a bounce to a row."""
    payload = f"{kind}{ledger_id}"
    return f"bounces+{payload}-{_mac(secret, 'verp', payload)}@{bounce_domain}"


def parse_verp(secret: str, address: str) -> tuple[str, int] | None:
    """(kind, ledger id) for a genuine VERP address, None for anything else or a forgery."""
    local = address.partition("@")[0]
    if not local.startswith("bounces+"):
        return None
    payload, _, mac = local[len("bounces+") :].partition("-")
    if len(payload) < 2 or not payload[1:].isdigit():
        return None
    if not hmac.compare_digest(mac, _mac(secret, "verp", payload)):
        return None
    return payload[0], int(payload[1:])


def link_token(secret: str, purpose: str, *parts: int) -> str:
    """An opaque, signed token naming `parts` (e.g. subscriber and campaign) for `purpose`."""
    payload = ".".join(str(part) for part in parts)
    body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    return f"{body}.{_mac(secret, purpose, payload, size=10)}"


def read_link_token(secret: str, purpose: str, token: str) -> tuple[int, ...] | None:
    """The parts a genuine token names, None for a tampered or foreign one."""
    body, _, mac = token.rpartition(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        parts = tuple(int(part) for part in payload.split("."))
    except (ValueError, UnicodeError):
        return None
    if not hmac.compare_digest(mac, _mac(secret, purpose, payload, size=10)):
        return None
    return parts
