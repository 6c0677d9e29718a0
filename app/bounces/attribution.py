"""Which ledger row a report is about, as clues in order of trust.

1. the VERP token in the envelope recipient (signed, names the row), or the same token as
   the original's envelope sender (ARF's Original-Mail-From, the returned Return-Path);
2. the signed Message-ID of the returned original;
3. Warta's own headers in the returned original (Feedback-ID names the campaign);
4. the reported recipient address alone (the latest ledger row for it).
A VERP-shaped address among these whose signature does not verify marks the report forged:
nothing is done for it, whatever else it says (a forger may quote a genuine message).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message

from app.bounces.parse.mime import address_field, header
from app.mail import identity
from app.mail.identity import Kind

VERP_PREFIX = "bounces+"
_FEEDBACK_ID = re.compile(r"^\s*(\d{1,10}):campaign:warta\s*$")


@dataclass(frozen=True)
class Row:
    """A row named by a signed token: a campaign ledger row, a transactional message, …"""

    kind: Kind
    row_id: int
    via: str
    """verp or message-id: which clue named it."""


@dataclass(frozen=True)
class Clues:
    """What a report offers to find its row, best first; the service resolves them."""

    row: Row | None
    campaign_id: int | None
    recipients: list[str]
    forged: bool = False


def verp_row(secret: str, addresses: list[str]) -> tuple[Row | None, bool]:
    """(row, forged) from VERP addresses: one token that does not verify makes it forged."""
    row = None
    for address in addresses:
        if not address.lower().startswith(VERP_PREFIX):
            continue
        parsed = identity.parse_verp(secret, address)
        if parsed is None:
            return None, True
        row = row or Row(parsed[0], parsed[1], "verp")
    return row, False


def clues(
    secret: str,
    envelope_recipients: list[str],
    original: Message | None,
    recipients: list[str],
    senders: Sequence[str] = (),
) -> Clues:
    """Gather every clue; `recipients` are the addresses the report names, `senders` the
    envelope senders it reports for the original (ARF's Original-Mail-From)."""
    returned = [address_field(header(original, "Return-Path"))] if original is not None else []
    row, forged = verp_row(secret, [*envelope_recipients, *senders, *returned])
    if forged:
        return Clues(None, None, recipients, forged=True)
    campaign_id = None
    if original is not None:
        if row is None:
            parsed = identity.parse_message_id(secret, header(original, "Message-ID", 1000))
            if parsed is not None:
                row = Row(parsed[0], parsed[1], "message-id")
        match = _FEEDBACK_ID.match(header(original, "Feedback-ID", 200))
        if match:
            campaign_id = int(match.group(1))
        if not recipients:
            to = address_field(header(original, "To", 1000))
            recipients = [to] if to else []
    return Clues(row, campaign_id, [r for r in recipients if r], forged)
