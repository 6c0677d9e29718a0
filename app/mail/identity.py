"""Names derived from a ledger row: Message-ID, VERP return path and link tokens.

All are deterministic (the same row always yields the same Message-ID, so a resubmission
after a crash can be recognised) and HMAC-signed (nobody can forge one for another row).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass
from email.utils import parseaddr
from enum import StrEnum
from typing import Any

from app.core.settings import Settings
from app.mail.mime import Address

_MAC_BYTES = 6
_MESSAGE_ID = re.compile(r"^\s*<([a-z])(\d{1,18})\.([a-z2-7]{1,20})@[^<>\s]+>\s*$", re.ASCII)
_MAX_ROW_DIGITS = 18


class Kind(StrEnum):
    """What a Message-ID or VERP address names: one letter before the row number."""

    CAMPAIGN = "c"
    """A campaign's send ledger row."""
    MESSAGE = "m"
    """A transactional message."""
    TEST = "t"
    """A campaign test send (a random number, no row)."""
    OPTIN = "o"
    """A double opt-in confirmation mail (a random number, no row)."""


def _kind(letter: str) -> Kind | None:
    try:
        return Kind(letter)
    except ValueError:
        return None


def _mac(secret: str, purpose: str, payload: str, size: int = _MAC_BYTES) -> str:
    digest = hmac.new(secret.encode(), f"{purpose}:{payload}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:size]).decode().rstrip("=").lower()


def _same(mac: str, expected: str) -> bool:
    """Constant-time comparison; a MAC with a non-ASCII character (never one of ours, and one
    `hmac.compare_digest` refuses with TypeError) is simply not the same."""
    return mac.isascii() and hmac.compare_digest(mac, expected)


def _row_number(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also accepts `²` (which `int` refuses) and Arabic-Indic digits."""
    return 0 < len(text) <= _MAX_ROW_DIGITS and text.isascii() and text.isdigit()


def message_id(secret: str, ledger_id: int, hostname: str, kind: Kind) -> str:
    """`<c123.mac@host>`: unique per ledger row, the same on every resubmission."""
    return f"<{kind}{ledger_id}.{_mac(secret, 'mid', f'{kind}{ledger_id}')}@{hostname}>"


def parse_message_id(secret: str, value: str) -> tuple[Kind, int] | None:
    """(kind, ledger id) for a genuine Warta Message-ID, None for any other or a forgery."""
    match = _MESSAGE_ID.match(value)
    if match is None:
        return None
    letter, number, mac = match.groups()
    kind = _kind(letter)
    if kind is None or not _same(mac, _mac(secret, "mid", f"{letter}{number}")):
        return None
    return kind, int(number)


def verp_address(secret: str, ledger_id: int, bounce_domain: str, kind: Kind) -> str:
    """`bounces+c123-mac@domain`: the envelope sender that attributes a bounce to a row."""
    payload = f"{kind}{ledger_id}"
    return f"bounces+{payload}-{_mac(secret, 'verp', payload)}@{bounce_domain}"


def parse_verp(secret: str, address: str) -> tuple[Kind, int] | None:
    """(kind, ledger id) for a genuine VERP address, None for anything else or a forgery."""
    local = address.partition("@")[0]
    if not local.startswith("bounces+"):
        return None
    payload, _, mac = local[len("bounces+") :].partition("-")
    if not _row_number(payload[1:]):
        return None
    kind = _kind(payload[0])
    if kind is None or not _same(mac, _mac(secret, "verp", payload)):
        return None
    return kind, int(payload[1:])


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
    if not _same(mac, _mac(secret, purpose, payload, size=10)):
        return None
    return parts


@functools.lru_cache(maxsize=16)
def _tracking_hasher(secret: str, purpose: str) -> Any:
    """A keyed BLAKE2b state for `purpose`, keyed once; callers copy it."""
    key = hashlib.sha256(f"warta-tracking-key:{purpose}:{secret}".encode()).digest()
    return hashlib.blake2b(key=key, digest_size=10)


def _tracking_mac(secret: str, purpose: str, payload: bytes) -> str:
    hasher = _tracking_hasher(secret, purpose).copy()
    hasher.update(payload)
    return str(hasher.hexdigest())


def tracking_token(secret: str, purpose: str, *parts: int) -> str:
    """A signed token like `link_token`, made cheaply enough to sign every link of a message.

    Keyed BLAKE2b (one pass; the keyed state is made once per secret and copied) instead of
    HMAC-SHA256: a tracked newsletter signs one token per link per recipient while it renders.
    """
    payload = ".".join(map(str, parts)).encode()
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    return f"{body}.{_tracking_mac(secret, purpose, payload)}"


def tracking_tokens(secret: str, purpose: str, prefix: tuple[int, ...], count: int) -> list[str]:
    """`tracking_token(secret, purpose, *prefix, n)` for n in range(count), sharing the work."""
    head = ".".join(map(str, prefix)) + "."
    state = _tracking_hasher(secret, purpose).copy()
    state.update(head.encode())
    tokens = []
    for n in range(count):
        payload = f"{head}{n}".encode()
        hasher = state.copy()
        hasher.update(str(n).encode())
        body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
        tokens.append(f"{body}.{hasher.hexdigest()}")
    return tokens


def read_tracking_token(secret: str, purpose: str, token: str) -> tuple[int, ...] | None:
    """The parts a genuine tracking token names, None for a tampered or foreign one."""
    body, _, mac = token.rpartition(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        parts = tuple(int(part) for part in payload.decode().split("."))
    except (ValueError, UnicodeError):
        return None
    if not _same(mac, _tracking_mac(secret, purpose, payload)):
        return None
    return parts


@dataclass(frozen=True, slots=True)
class SiteIdentity:
    """The deployment-wide names every message carries."""

    secret: str
    public_url: str
    hostname: str
    bounce_domain: str
    inbound_domain: str = ""
    """Where replies to signed reply addresses go (WARTA_INBOUND_DOMAIN or the bounce domain)."""


def preview_identity(site: SiteIdentity) -> SiteIdentity:
    """The site with a secret only previews sign with: every token in a preview looks like
    the real one and is refused everywhere (the pages, the processor check the real secret),
    so a preview is no way to a subscriber's pages or to unsubscribe, track or bounce them."""
    secret = hmac.new(site.secret.encode(), b"warta-preview-only", hashlib.sha256).hexdigest()
    return dataclasses.replace(site, secret=secret)


def site_identity(settings: Settings) -> SiteIdentity:
    """The names and secret every message is built with."""
    return SiteIdentity(
        secret=settings.effective_secret_key(),
        public_url=settings.public_url,
        hostname=settings.mta_hostname,
        bounce_domain=settings.bounce_domain,
        inbound_domain=settings.reply_domain(),
    )


def mailbox(value: str) -> Address:
    """`Name <addr>` or `addr` as an Address."""
    name, email = parseaddr(value)
    return Address(email=email, name=name)
