"""What the spool stores for a message: its envelope, and the one file that holds both.

Since layout 2 a queued message is one file, ``msg/<queue id>.eml``: a first line holding
the envelope as accepted, then the message bytes as received::

    WARTA-SPOOL/1 {"mail_from":"a@example.com","recipients":[...],...}\\n
    Received: ...

The line is JSON (``Envelope.to_json``, which never contains a raw newline) after a fixed
marker, so a person can read it with ``head -1``. Layout 1 kept the envelope in a second
file, ``env/<queue id>.json``, and the bare bytes in ``msg/``; such a message has no marker.
A later envelope (after a deferral) is written to ``env/<queue id>.json`` in both layouts and
then wins over the first line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NewType

QueueId = NewType("QueueId", str)
"""Sortable unique id of a spooled message: nanosecond time in hex, then random hex."""

MARKER = b"WARTA-SPOOL/1 "
"""How a message file of layout 2 begins; the envelope's JSON follows up to the newline."""
HEAD_CHUNK = 8192
"""Bytes read at a time when only a message file's first line is wanted."""


class RecipientStatus(StrEnum):
    """Where delivery to one recipient stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(slots=True)
class RecipientState:
    """Delivery state of one recipient: status, the last remote reply and attempts made."""

    status: RecipientStatus = RecipientStatus.PENDING
    last_reply: str | None = None
    attempts: int = 0


@dataclass(slots=True)  # slots: the agent holds one per message it schedules
class Envelope:
    """The SMTP envelope of a spooled message and the delivery state of each recipient.

    ``mail_from`` is ``""`` for the null sender (bounces, DSNs). ``queue_id`` and
    ``received_at`` are assigned by ``Spool.accept``.
    """

    mail_from: str
    recipients: list[str]
    message_id: str | None = None
    queue_id: QueueId = QueueId("")
    received_at: float = 0.0
    next_attempt_at: float = 0.0
    first_attempt_at: float | None = None
    states: dict[str, RecipientState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for recipient in self.recipients:
            self.states.setdefault(recipient, RecipientState())

    def pending(self) -> list[str]:
        """Recipients still to be delivered to."""
        return [r for r in self.recipients if self.states[r].status is RecipientStatus.PENDING]

    def to_json(self) -> bytes:
        """Serialise for a message file's first line or ``env/<queue id>.json``."""
        # Built by hand: dataclasses.asdict deep-copies every field, several times slower.
        data = {
            "mail_from": self.mail_from,
            "recipients": self.recipients,
            "message_id": self.message_id,
            "queue_id": self.queue_id,
            "received_at": self.received_at,
            "next_attempt_at": self.next_attempt_at,
            "first_attempt_at": self.first_attempt_at,
            "states": {
                address: {
                    "status": state.status.value,
                    "last_reply": state.last_reply,
                    "attempts": state.attempts,
                }
                for address, state in self.states.items()
            },
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        """Parse what ``to_json`` wrote; raises ``ValueError`` on anything else."""
        data: dict[str, Any] = json.loads(raw)
        try:
            states = {
                address: RecipientState(
                    status=RecipientStatus(state["status"]),
                    last_reply=state["last_reply"],
                    attempts=int(state["attempts"]),
                )
                for address, state in data["states"].items()
            }
            return cls(
                mail_from=str(data["mail_from"]),
                recipients=[str(r) for r in data["recipients"]],
                message_id=data["message_id"],
                queue_id=QueueId(str(data["queue_id"])),
                received_at=float(data["received_at"]),
                next_attempt_at=float(data["next_attempt_at"]),
                first_attempt_at=data["first_attempt_at"],
                states=states,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed envelope: {exc}") from exc


def encode(envelope: Envelope, data: bytes) -> bytes:
    """The content of a message file: the marked envelope line, then the message bytes."""
    return b"".join((MARKER, envelope.to_json(), b"\n", data))


def body(raw: bytes) -> bytes:
    """The message bytes of a message file's content, of either layout."""
    if raw.startswith(MARKER):
        return raw[raw.index(b"\n") + 1 :]
    return raw


def read_head(path: Path) -> bytes:
    """A message file's first line without its newline; b"" when it has no marker.

    Raises ``FileNotFoundError`` once the message is gone.
    """
    with path.open("rb", buffering=0) as file:
        head = file.read(HEAD_CHUNK)
        if not head.startswith(MARKER):
            return b""
        while (end := head.find(b"\n")) < 0:
            more = file.read(HEAD_CHUNK)
            if not more:
                return head  # torn or not ours: the caller's parse fails on it
            head += more
        return head[:end]


def envelope_in(head: bytes) -> Envelope:
    """The envelope in a marked first line (``read_head``); ``ValueError`` if malformed."""
    if not head.startswith(MARKER):
        raise ValueError("no envelope line")
    return Envelope.from_json(head[len(MARKER) :])


def read_envelope_file(path: Path) -> Envelope | None:
    """The envelope in ``env/<queue id>.json``; None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return Envelope.from_json(b"".join(chunks))


def queued_envelopes(spool: Path) -> dict[QueueId, Envelope]:
    """The current envelope of each message queued in the spool at ``spool``, read only.

    For tools beside a running MTA (benchmarks, diagnostics): nothing is recovered or
    changed, and a message removed or unreadable meanwhile is left out.
    """
    found: dict[QueueId, Envelope] = {}
    with os.scandir(spool / "msg") as entries:
        names = [entry.name for entry in entries if entry.name.endswith(".eml")]
    for name in names:
        queue_id = QueueId(name.removesuffix(".eml"))
        try:
            head = read_head(spool / "msg" / name)
            changed = read_envelope_file(spool / "env" / f"{queue_id}.json")
            found[queue_id] = changed if changed is not None else envelope_in(head)
        except (OSError, ValueError):
            continue
    return found
