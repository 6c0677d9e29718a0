"""Signed reply addresses: `reply+<token>@<inbound domain>` names a campaign (and subscriber)
or a transactional message, so a person's reply can be tied to what they replied to.

The token is lower case only (some MTAs fold local parts) and HMAC-signed with the secret
key: `c12s345-<mac>` is campaign 12, subscriber 345; `m77-<mac>` is transactional message 77.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

REPLY_PREFIX = "reply+"
"""The local-part prefix the inbound listener and the reply processor recognise."""
_PURPOSE = b"reply:"
_MAC_BYTES = 8
_TOKEN = re.compile(r"^(?:c(\d{1,18})s(\d{1,18})|m(\d{1,18}))-([a-z2-7]{13})$", re.ASCII)


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """What a genuine reply token names."""

    campaign_id: int | None = None
    subscriber_id: int | None = None
    message_id: int | None = None


def _mac(secret: str, payload: str) -> str:
    digest = hmac.new(secret.encode(), _PURPOSE + payload.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:_MAC_BYTES]).decode().rstrip("=").lower()


def reply_address(secret: str, domain: str, target: ReplyTarget) -> str:
    """The Reply-To address that names `target` (a campaign and subscriber, or a message)."""
    if target.message_id is not None:
        payload = f"m{target.message_id}"
    elif target.campaign_id is not None and target.subscriber_id is not None:
        payload = f"c{target.campaign_id}s{target.subscriber_id}"
    else:
        raise ValueError("a reply target names a message, or a campaign and a subscriber")
    return f"{REPLY_PREFIX}{payload}-{_mac(secret, payload)}@{domain}"


def is_reply_address(address: str) -> bool:
    """Whether the local part carries the reply prefix (genuine or not)."""
    return address.partition("@")[0].lower().startswith(REPLY_PREFIX)


def parse_reply_address(secret: str, address: str) -> ReplyTarget | None:
    """What a genuine reply address names; None for a forged, tampered or foreign one."""
    local = address.rpartition("@")[0].lower()
    if not local.startswith(REPLY_PREFIX):
        return None
    match = _TOKEN.match(local[len(REPLY_PREFIX) :])
    if match is None:
        return None
    campaign, subscriber, message, mac = match.groups()
    payload = f"m{message}" if message else f"c{campaign}s{subscriber}"
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    if message:
        return ReplyTarget(message_id=int(message))
    return ReplyTarget(campaign_id=int(campaign), subscriber_id=int(subscriber))
