"""Auto-replies (RFC 3834 `Auto-Submitted`, vacation and out-of-office notices): not bounces."""

from __future__ import annotations

import re
from email.message import Message

from app.bounces.parse.mime import header

_VACATION_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|answer)|auto:|out of (the )?office|vacation|"
    r"on leave|away from (the )?office|abwesenheit|r[ée]ponse automatique|absence|"
    r"autosvar|automatisch antwoord|respuesta autom[áa]tica|fuori sede)",
    re.IGNORECASE,
)
_DAEMONS = ("mailer-daemon", "postmaster", "mail delivery")
_MARKERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Vacation")


def is_auto_reply(message: Message) -> bool:
    """Whether the message is an automatic reply from a person's mailbox (not a bounce)."""
    if any(message.get(name) is not None for name in _MARKERS):
        return True
    if header(message, "Precedence", 40).lower() == "auto_reply":
        return True
    if _VACATION_SUBJECT.search(header(message, "Subject")):
        return True
    auto = header(message, "Auto-Submitted", 40).lower().split(";")[0].strip()
    sender = header(message, "From").lower()
    return auto in ("auto-replied", "auto-generated") and not any(d in sender for d in _DAEMONS)
