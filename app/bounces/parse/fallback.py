"""Non-standard bounces (qmail, old Sendmail, Exchange, Yahoo, …) through flufl.bounce.

flufl.bounce's detectors name the failed recipients; the diagnostic is the reply line that
follows the address in the body (qmail's "Remote host said:", Sendmail's "<<< 550 …").
"""

from __future__ import annotations

import logging
import re
from email.message import Message

from flufl.bounce import all_failures

from app.bounces.parse.dsn import DsnRecipient
from app.bounces.parse.mime import parts, text_of, too_many_parts

logger = logging.getLogger(__name__)
MAX_BODY = 65_536
"""Characters of body text the heuristics read (they are regexes over lines)."""
MAX_RECIPIENTS = 100
_REPLY_LINE = re.compile(r"\b([245]\d\d)[ -]+(?:#?\(?([245]\.\d{1,3}\.\d{1,3})\)?)?.*")
_STATUS_ONLY = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b.*")


def scan(message: Message, *, without_delivery_status: bool = False) -> list[DsnRecipient]:
    """Failed (and delayed) recipients of a non-standard bounce; [] if none is recognised.

    `without_delivery_status` drops the message's delivery-status parts first (they were
    read and said nothing usable): flufl.bounce's DSN detector would otherwise answer with
    their empty recipients and stop the detectors that read the rest.
    """
    if too_many_parts(message):
        return []  # the detectors walk every part: a MIME bomb would cost seconds
    if without_delivery_status:
        _drop_delivery_status(message)
    try:
        temporary, permanent = all_failures(_bounded(message))
    except Exception:  # third-party heuristics over hostile input: never fatal
        logger.warning("flufl.bounce could not scan a report", exc_info=True)
        return []
    body = _body(message)
    found = [
        _status(address, body, "failed") for address in sorted(_decode(permanent))[:MAX_RECIPIENTS]
    ]
    found += [
        _status(address, body, "delayed")
        for address in sorted(_decode(temporary) - _decode(permanent))[:MAX_RECIPIENTS]
    ]
    return found


def _drop_delivery_status(message: Message) -> None:
    for part in parts(message):
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            kept = [
                p
                for p in payload
                if not isinstance(p, Message) or p.get_content_type() != "message/delivery-status"
            ]
            part.set_payload(kept)


def _bounded(message: Message) -> Message:
    """The message with every text payload cut to MAX_BODY (the detectors read them all)."""
    for part in parts(message):
        payload = part.get_payload()
        if isinstance(payload, str) and len(payload) > MAX_BODY:
            part.set_payload(payload[:MAX_BODY])
    return message


def _decode(addresses: frozenset[bytes] | frozenset[str]) -> set[str]:
    out = set()
    for address in addresses:
        text = address.decode("utf-8", "replace") if isinstance(address, bytes) else address
        text = text.strip().strip("<>").lower()
        if "@" in text and len(text) <= 320:
            out.add(text)
    return out


def _body(message: Message) -> str:
    texts = [
        text_of(part, MAX_BODY)
        for part in parts(message)
        if part.get_content_maintype() == "text" and not part.is_multipart()
    ]
    return "\n".join(texts)[:MAX_BODY]


def _status(address: str, body: str, action: str) -> DsnRecipient:
    """The recipient with the first reply line after its mention (or anywhere) as diagnostic."""
    lower = body.lower()
    start = lower.find(address)
    windows = [body[start : start + 1500]] if start >= 0 else []
    windows.append(body)
    for window in windows:
        for pattern in (_REPLY_LINE, _STATUS_ONLY):
            match = pattern.search(window)
            if match:
                line = match.group(0).strip()[:500]
                status = next(
                    (g for g in match.groups() if g and "." in g),
                    "",
                )
                return DsnRecipient(address, action=action, status=status, diagnostic=line)
    return DsnRecipient(address, action=action)
