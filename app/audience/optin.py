"""The double opt-in confirmation mail: what it says and the link that confirms."""

from __future__ import annotations

import html
import secrets
import time

from app.audience.subscriptions import confirm_token
from app.core.settings import Settings
from app.mail import identity
from app.mail.identity import Kind, mailbox
from app.mail.mime import Address, OutgoingMessage, build_message
from app.models import MailingList, Subscriber


def sender(settings: Settings) -> Address:
    """The From of confirmation mail."""
    return mailbox(settings.optin_from_email or f"noreply@{settings.mta_hostname}")


def confirmation(
    settings: Settings, subscriber: Subscriber, lists: list[MailingList]
) -> tuple[str, bytes]:
    """(envelope sender, message bytes) asking `subscriber` to confirm `lists`."""
    secret = settings.effective_secret_key()
    token = confirm_token(secret, subscriber.id, [item.id for item in lists], time.time())
    url = f"{settings.public_url}/confirm/{token}"
    names = ", ".join(item.name for item in lists)
    text = (
        f"Please confirm that you want to receive {names}:\n\n{url}\n\n"
        "If you did not ask for this, ignore this message: nothing will be sent to you.\n"
    )
    body = (
        f"<p>Please confirm that you want to receive <strong>{html.escape(names)}</strong>.</p>"
        f'<p><a href="{html.escape(url)}">Confirm my subscription</a></p>'
        "<p>If you did not ask for this, ignore this message: nothing will be sent to you.</p>"
    )
    # Each mail gets its own row number: a second request must not look like a resubmission.
    row = 10**15 + secrets.randbelow(10**15)
    data = build_message(
        OutgoingMessage(
            sender=sender(settings),
            recipient=Address(email=subscriber.email, name=subscriber.name),
            subject=f"Confirm your subscription: {names}"[:900],
            message_id=identity.message_id(secret, row, settings.mta_hostname, Kind.OPTIN),
            text=text,
            html=body,
        )
    )
    envelope = identity.verp_address(secret, row, settings.bounce_domain, Kind.OPTIN)
    return envelope, data
