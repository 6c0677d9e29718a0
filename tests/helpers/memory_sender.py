"""The in-memory twin of the SMTP sender: records what it accepts, replies as told."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.mail.result import MAIL_ACTION_OK, SendResult

DELIVERED = SendResult.from_reply(MAIL_ACTION_OK, "2.0.0 OK (in memory)")


@dataclass(frozen=True, slots=True)
class Submission:
    """One message as `MemorySender` received it."""

    envelope_from: str
    recipient: str
    message: bytes


class MemorySender:
    """Satisfies the `Sender` protocol without a network: every recipient answered from `results`."""

    def __init__(self, results: Mapping[str, SendResult] | None = None) -> None:
        self.results = dict(results or {})
        self.submissions: list[Submission] = []

    async def send(
        self, envelope_from: str, recipients: Sequence[str], message: bytes
    ) -> dict[str, SendResult]:
        """Answer each recipient from `results` (delivered if absent) and record deliveries."""
        replies: dict[str, SendResult] = {}
        for recipient in recipients:
            replies[recipient] = self.results.get(recipient, DELIVERED)
            if replies[recipient].delivered:
                self.submissions.append(Submission(envelope_from, recipient, message))
        return replies

    async def send_one(self, envelope_from: str, recipient: str, message: bytes) -> SendResult:
        """Submit `message` to one recipient."""
        return (await self.send(envelope_from, [recipient], message))[recipient]
