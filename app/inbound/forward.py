"""Forwarding a clean reply to a person: a new message with the reply attached whole
(message/rfc822), submitted to the MTA with the null sender so it can never bounce back.

The forward's Message-ID is derived from the inbound row, so every try of one row's forward
carries the same one: the MTA answers "already queued" to a repeat and does not send it."""

from __future__ import annotations

import email
import email.policy
import hashlib
from email.message import EmailMessage

import aiosmtplib

from app.models import InboundMessage

TIMEOUT = 30.0


def forward_message(row: InboundMessage, message: bytes, to: str, domain: str) -> EmailMessage:
    """The forward of one reply: Reply-To is the person who wrote it."""
    forward = EmailMessage(policy=email.policy.SMTP)
    forward["From"] = f"Warta replies <replies@{domain}>"
    forward["To"] = to
    if row.from_header:
        forward["Reply-To"] = row.from_header
    forward["Subject"] = f"Fwd: {row.subject}" if row.subject else "Fwd: a reply"
    forward["Message-ID"] = forward_message_id(row, domain)
    forward["Auto-Submitted"] = "auto-generated"
    about = f"campaign {row.campaign_id}" if row.campaign_id else "a message"
    forward.set_content(
        f"A reply to {about} from {row.from_header or row.mail_from}, "
        f"received as inbound message {row.id} ({row.authentication_results}).\n"
    )
    original = email.message_from_bytes(message, policy=email.policy.SMTP)
    forward.add_attachment(original, disposition="attachment", filename="reply.eml")
    return forward


def forward_message_id(row: InboundMessage, domain: str) -> str:
    """The Message-ID of one inbound row's forward, the same on every try. The digest of the
    stored message keeps it apart from an earlier reply's forward should the row's id be
    handed out again (a database restored from a backup) while the MTA still remembers it."""
    digest = hashlib.sha256(row.raw).hexdigest()[:16]
    return f"<fwd-{row.id}.{digest}@{domain}>"


async def submit(submission: str, forward: EmailMessage, to: str) -> None:
    """Hand the forward to the MTA's submission listener (null sender: never bounced)."""
    host, _, port = submission.split(",")[0].strip().rpartition(":")
    await aiosmtplib.send(
        forward,
        hostname=host.strip("[]") or "127.0.0.1",
        port=int(port),
        sender="",
        recipients=[to],
        timeout=TIMEOUT,
        start_tls=False,
        use_tls=False,
    )
