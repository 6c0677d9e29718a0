"""Which ledger row a report is about: only what Warta signed names one.

1. the VERP token in the envelope recipient (signed, names the row), or the same token as
   the original's envelope sender (ARF's Original-Mail-From, the returned Return-Path);
2. the signed Message-ID of the returned original.
Nothing else names a row: the reported address, `To` and `Feedback-ID` are whatever the
sender of the report wrote, and anyone may mail the bounce domain. A report without a signed
clue is unattributed (kept for an operator, acted on never). A VERP-shaped address among
these whose signature does not verify marks the report forged: nothing is done for it,
whatever else it says (a forger may quote a genuine message).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message

from app.bounces.parse.mime import address_field, header
from app.mail import identity
from app.mail.identity import Kind

VERP_PREFIX = "bounces+"


@dataclass(frozen=True)
class Row:
    """A row named by a signed token: a campaign ledger row, a transactional message, …"""

    kind: Kind
    row_id: int
    via: str
    """verp or message-id: which clue named it."""


@dataclass(frozen=True)
class Clues:
    """The row a report names (if a signed clue names one) and the addresses it reports."""

    row: Row | None
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
    """Gather the signed clues; `recipients` are the addresses the report names, `senders` the
    envelope senders it reports for the original (ARF's Original-Mail-From)."""
    returned = [address_field(header(original, "Return-Path"))] if original is not None else []
    row, forged = verp_row(secret, [*envelope_recipients, *senders, *returned])
    if forged:
        return Clues(None, recipients, forged=True)
    if original is not None:
        if row is None:
            parsed = identity.parse_message_id(secret, header(original, "Message-ID", 1000))
            if parsed is not None:
                row = Row(parsed[0], parsed[1], "message-id")
        if not recipients:
            to = address_field(header(original, "To", 1000))
            recipients = [to] if to else []
    return Clues(row, [r for r in recipients if r], forged)
