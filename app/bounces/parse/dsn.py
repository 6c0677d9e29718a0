"""RFC 3464 delivery status notifications: `multipart/report; report-type=delivery-status`."""

from __future__ import annotations

import email.parser
import email.policy
import re
from dataclasses import dataclass
from email.message import Message

from app.bounces.parse.mime import address_field, embedded_headers, header, parts, text_of

_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$", re.ASCII)
MAX_RECIPIENTS = 100
"""Per-recipient blocks read from one report; a real DSN names a handful."""
FAILED_ACTIONS = frozenset({"failed"})
DELAYED_ACTIONS = frozenset({"delayed"})
ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
"""RFC 3464's actions; a block is read as one of them or not used."""
_STATUS_ACTIONS = {"5": "failed", "4": "delayed", "2": "delivered"}
"""What a block without a usable Action means, by the class of its Status."""


@dataclass(frozen=True)
class DsnRecipient:
    """One recipient block of a DSN (or what a non-standard bounce says about a recipient)."""

    final_recipient: str
    original_recipient: str = ""
    action: str = "failed"
    status: str = ""
    diagnostic: str = ""
    will_retry_until: str = ""
    remote_mta: str = ""

    @property
    def failed(self) -> bool:
        """The message will not reach this recipient."""
        return self.action in FAILED_ACTIONS

    @property
    def delayed(self) -> bool:
        """The message is still being retried for this recipient."""
        return self.action in DELAYED_ACTIONS


@dataclass(frozen=True)
class DeliveryReport:
    """A parsed DSN: per-recipient status and the returned original's headers."""

    reporting_mta: str
    recipients: list[DsnRecipient]
    original: Message | None

    @property
    def usable(self) -> bool:
        """Whether any recipient block says what happened (else: try the heuristics)."""
        return any(item.action in ACTIONS for item in self.recipients)


def parse_dsn(message: Message) -> DeliveryReport | None:
    """The report in a DSN, or None when the message is not one."""
    status_part = None
    original = None
    for part in parts(message):
        content_type = part.get_content_type()
        if content_type == "message/delivery-status" and status_part is None:
            status_part = part
        elif content_type in ("message/rfc822", "text/rfc822-headers") and original is None:
            original = embedded_headers(part)
    if status_part is None:
        return None
    blocks = _blocks(status_part)
    if not blocks:
        return DeliveryReport("", [], original)
    per_message, per_recipient = blocks[0], blocks[1:]
    recipients = [
        status
        for block in per_recipient[:MAX_RECIPIENTS]
        if (status := _recipient(block)) is not None
    ]
    return DeliveryReport(header(per_message, "Reporting-MTA"), recipients, original)


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status part (the parser may or may not split them)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    text = text_of(part, 200_000)
    parser = email.parser.HeaderParser(policy=email.policy.compat32)
    chunks = [chunk for chunk in text.replace("\r\n", "\n").split("\n\n") if chunk.strip()]
    return [parser.parsestr(chunk) for chunk in chunks[: MAX_RECIPIENTS + 1]]


def _recipient(block: Message) -> DsnRecipient | None:
    final = address_field(header(block, "Final-Recipient"))
    original = address_field(header(block, "Original-Recipient"))
    if not final and not original:
        return None
    status = header(block, "Status", 32).split(" ")[0] if header(block, "Status") else ""
    return DsnRecipient(
        final_recipient=final or original,
        original_recipient=original,
        action=_action(header(block, "Action", 32), status),
        status=status,
        diagnostic=_diagnostic(header(block, "Diagnostic-Code")),
        will_retry_until=header(block, "Will-Retry-Until", 100),
        remote_mta=header(block, "Remote-MTA", 300).partition(";")[2].strip(),
    )


def _action(value: str, status: str) -> str:
    """RFC 3464's action for what MTAs write: `failure` and opensmtpd's `error` as `failed`,
    comments after the word dropped (as flufl.bounce reads them); without a recognisable
    Action, the class of a well-formed Status decides ("" when neither says anything)."""
    word = value.strip().lower()
    if word.startswith(("fail", "error")):
        return "failed"
    if word.startswith("delay"):
        return "delayed"
    for action in ("delivered", "relayed", "expanded"):
        if word.startswith(action):
            return action
    if _STATUS.match(status):
        return _STATUS_ACTIONS[status[0]]
    return ""


def _diagnostic(value: str) -> str:
    """`smtp; 550 5.1.1 user unknown` → `550 5.1.1 user unknown`."""
    kind, sep, rest = value.partition(";")
    return rest.strip() if sep and " " not in kind.strip() else value
