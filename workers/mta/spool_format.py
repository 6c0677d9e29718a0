"""What the spool stores for a message: its envelope, and the one file that holds both.

Since layout 2 a queued message is one file, ``msg/<queue id>.eml``: a first line holding
the size of the message and the envelope as accepted, the message bytes as received, then
each changed envelope (after a deferral) appended on a line of its own::

    WARTA-SPOOL/1 5120 {"mail_from":"a@example.com","recipients":[...],...}\\n
    Received: ... (5,120 bytes)
    \\n{"mail_from":"a@example.com",...,"states":{... "attempts":1 ...}}\\n

The envelopes are JSON (``Envelope.to_json``, which never contains a raw newline), so a
person can read them with ``head -1`` and ``tail -1``. The last complete envelope appended
is the current one; one torn by a crash was never acknowledged and is skipped. Layout 1
kept the envelope in a second file, ``env/<queue id>.json``, and the bare bytes in ``msg/``;
such a message has no marker. An ``env/`` file, when there is one (layout 1, or a message
changed more often than appending allows), wins over the message file.
"""

from __future__ import annotations

import contextlib
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
_QUEUE_ID_KEY = b'"queue_id":"'
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
    return b"".join((MARKER, b"%d " % len(data), envelope.to_json(), b"\n", data))


def record(envelope_json: bytes) -> bytes:
    """A changed envelope (``Envelope.to_json``) as appended to its message file, after the
    bytes.

    Between newlines: a record torn by a crash (never acknowledged) stays on a line of its
    own, and the next one appended after it still parses.
    """
    return b"".join((b"\n", envelope_json, b"\n"))


@dataclass(frozen=True, slots=True)
class Head:
    """What a message file's first line says: the envelope as accepted, where the bytes are."""

    envelope: Envelope
    body_start: int
    body_size: int

    @property
    def body_end(self) -> int:
        """Where the message bytes end and the changed envelopes, if any, begin."""
        return self.body_start + self.body_size


def body_end(line: bytes) -> int:
    """Where the bytes end after the first line ``line``, the envelope left unparsed."""
    if not line.startswith(MARKER):
        raise ValueError("no envelope line")
    size, blank, _ = line[len(MARKER) :].partition(b" ")
    if not blank or not size.isdigit():
        raise ValueError("no message size")
    return len(line) + 1 + int(size)


def parse_head(line: bytes) -> Head:
    """Parse a message file's first line, newline excluded; ``ValueError`` if malformed."""
    if not line.startswith(MARKER):
        raise ValueError("no envelope line")
    size, _, envelope = line[len(MARKER) :].partition(b" ")
    if not size.isdigit():
        raise ValueError("no message size")
    return Head(Envelope.from_json(envelope), len(line) + 1, int(size))


def head_queue_id(line: bytes) -> QueueId:
    """The queue id a marked first line names, its envelope not parsed; ``ValueError`` if none.

    Found by its key, which is cheap (parsing the envelope of a message to a thousand
    recipients takes a millisecond): ``Envelope.to_json`` escapes every quote inside a string,
    so its output holds ``"queue_id":"`` nowhere else.
    """
    start = line.find(_QUEUE_ID_KEY) + len(_QUEUE_ID_KEY)
    end = line.find(b'"', start)
    if start < len(_QUEUE_ID_KEY) or end < 0:
        return parse_head(line).envelope.queue_id  # not as to_json writes it: parse it all
    return QueueId(line[start:end].decode())


def body(raw: bytes) -> bytes:
    """The message bytes of a message file's content, of either layout."""
    if not raw.startswith(MARKER):
        return raw
    start = raw.index(b"\n") + 1
    size = int(raw[len(MARKER) : raw.index(b" ", len(MARKER))])  # the envelope not parsed
    return raw[start : start + size]


def latest_record(tail: bytes) -> Envelope | None:
    """The last complete changed envelope among those appended; None if there is none."""
    for line in reversed(tail.split(b"\n")):
        if line:
            with contextlib.suppress(ValueError):
                return Envelope.from_json(line)
    return None


def read_head(path: Path) -> bytes:
    """A message file's first line without its newline; b"" when it has no marker.

    Raises ``FileNotFoundError`` once the message is gone.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return head_line(fd)
    finally:
        os.close(fd)


def head_line(fd: int) -> bytes:
    """The first line of the open message file ``fd`` (see ``read_head``)."""
    head = os.pread(fd, HEAD_CHUNK, 0)
    if not head.startswith(MARKER):
        return b""
    while (end := head.find(b"\n")) < 0:
        more = os.pread(fd, HEAD_CHUNK, len(head))
        if not more:
            return head  # torn or not ours: the caller's parse fails on it
        head += more
    return head[:end]


def read_current(path: Path) -> Envelope | None:
    """The envelope in a message file: the last one appended, else the first line's.

    None for a file of layout 1 (no marker); ``ValueError`` if the first line is
    malformed; ``FileNotFoundError`` once the message is gone. Reads the first line and
    what follows the bytes, never the bytes.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        line = head_line(fd)
        if not line:
            return None
        head = parse_head(line)
        tail = os.pread(fd, os.fstat(fd).st_size - head.body_end, head.body_end)
    finally:
        os.close(fd)
    changed = latest_record(tail) if tail else None
    return changed if changed is not None else head.envelope


def envelope_in(head: bytes) -> Envelope:
    """The envelope in a marked first line (``read_head``); ``ValueError`` if malformed."""
    return parse_head(head).envelope


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
            changed = read_envelope_file(spool / "env" / f"{queue_id}.json")
            if (current := changed) is None:
                current = read_current(spool / "msg" / name)
        except (OSError, ValueError):
            continue
        if current is not None:
            found[queue_id] = current
    return found
