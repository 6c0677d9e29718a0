"""RFC 3464 delivery status notifications for mail that has no ledger row to report to."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate

from app.mail.result import parse_enhanced_status
from workers.mta.listener import header_block


@dataclass(frozen=True)
class Failure:
    """One recipient that will not get the message, and why."""

    recipient: str
    reply: str
    expired: bool = False


def build_dsn(
    *,
    hostname: str,
    original_sender: str,
    failures: list[Failure],
    original: bytes,
    received_at: float,
) -> tuple[str, bytes]:
    """(Message-ID, bytes) of a multipart/report DSN telling `original_sender` what failed."""
    message_id = f"<dsn.{secrets.token_hex(8)}@{hostname}>"
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    human = "\r\n".join(
        [
            f"This is the mail system at {hostname}.",
            "",
            "Your message could not be delivered to one or more recipients:",
            "",
            *(f"<{failure.recipient}>: {_one_line(failure.reply)}" for failure in failures),
        ]
    )
    per_message = (
        f"Reporting-MTA: dns; {hostname}\r\n"
        f"Arrival-Date: {format_datetime(datetime.fromtimestamp(received_at, UTC))}\r\n"
    )
    per_recipient = "".join(
        "\r\n"
        f"Final-Recipient: rfc822; {failure.recipient}\r\n"
        "Action: failed\r\n"
        f"Status: {_status(failure)}\r\n"
        f"Diagnostic-Code: smtp; {_one_line(failure.reply)}\r\n"
        for failure in failures
    )
    head = (
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
        f"To: <{original_sender}>\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: {message_id}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
    )
    body = (
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{human}\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"{per_message}{per_recipient}\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    )
    tail = f"\r\n--{boundary}--\r\n"
    data = (head + body).encode("ascii", "replace") + header_block(original) + tail.encode()
    return message_id, data


def _status(failure: Failure) -> str:
    if failure.expired:
        return "4.4.7"
    reply = failure.reply
    code, _, rest = reply.partition(" ")
    enhanced = parse_enhanced_status(rest) if code.isdigit() else parse_enhanced_status(reply)
    return enhanced or ("5.0.0" if code.startswith("5") else "4.0.0")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:900]
