"""Bounce and complaint reports as remote MTAs and feedback loops send them."""

from __future__ import annotations

import asyncio
import smtplib
from email.utils import formatdate

from app.core.settings import Settings
from tests.helpers.api import eventually


def dsn(verp: str, recipient: str, diagnostic: str, message_id: str, padding: int = 0) -> bytes:
    """A Postfix-style DSN for `recipient`, optionally with a large attachment at the end."""
    status = diagnostic.split()[1]
    filler = ("Z" * 998 + "\r\n") * (padding // 1000)
    return (
        "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\n"
        f"To: {verp}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {formatdate()}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.com\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"To: {recipient}\r\nMessage-ID: {message_id}\r\n\r\n"
        f"--B\r\nContent-Type: application/octet-stream\r\n\r\n{filler}\r\n--B--\r\n"
    ).encode()


def arf(recipient: str, original: bytes) -> bytes:
    """An RFC 5965 abuse report quoting the original message's headers."""
    headers = original.split(b"\r\n\r\n", 1)[0]
    return (
        (
            "From: fbl@isp.example.net\r\nTo: complaints@bounces.warta.example\r\n"
            "Subject: Abuse report\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n'
            "\r\n--F\r\nContent-Type: text/plain\r\n\r\nA user reported this message.\r\n"
            "--F\r\nContent-Type: message/feedback-report\r\n\r\n"
            "Feedback-Type: abuse\r\nUser-Agent: IspFbl/2.1\r\nVersion: 1\r\n"
            f"Original-Rcpt-To: <{recipient}>\r\n\r\n"
            "--F\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        ).encode()
        + headers
        + b"\r\n\r\n--F--\r\n"
    )


def smtp_transaction(
    address: str, mail_from: str, recipients: list[str], data: bytes, *, utf8: bool = False
) -> tuple[int, str]:
    """One transaction; (code, reply) of RCPT if refused there, else of DATA. With `utf8`,
    SMTPUTF8 is asked for (non-ASCII addresses)."""
    host, _, port = address.rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=60) as client:
        client.ehlo("mx.remote.example")
        client.mail(mail_from, ["SMTPUTF8"] if utf8 else [])
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            if code >= 400:
                return code, reply.decode()
        code, reply = client.data(data)
        return code, reply.decode()


async def deliver_report(
    settings: Settings, recipient: str, data: bytes, *, utf8: bool = False
) -> tuple[int, str]:
    """Send a report to the MTA's inbound listener from the null sender, as MTAs do."""
    return await asyncio.to_thread(
        smtp_transaction, settings.mta_inbound, "", [recipient], data, utf8=utf8
    )


async def inbound_processed(settings: Settings) -> None:
    """Wait until the bounce processor has handled (or set aside) every stored report."""
    inbound = settings.var_dir / "inbound"

    async def empty() -> bool:
        return not any(list((inbound / sub).iterdir()) for sub in ("new", "cur"))

    await eventually(empty, what="inbound Maildir processed")
