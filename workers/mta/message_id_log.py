"""The spool's memory of accepted Message-IDs on disk: ``message-ids.log``, one JSON a line.

Each commit appends its batch's ids (``t`` accepted at, ``q`` queue id, ``m`` the id without
angle brackets) and fsyncs; recovery reads the log back, adds the ids of the queued
envelopes, drops those older than the dedupe window and rewrites the log compacted.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from workers.mta.spool_format import Envelope, QueueId

MESSAGE_IDS_LOG = "message-ids.log"

Known = dict[str, tuple[QueueId, float]]
"""Normalised Message-ID → (queue id, accepted at)."""


def normalise_message_id(message_id: str) -> str:
    """A Message-ID without surrounding blanks and angle brackets, the key it is known by."""
    return message_id.strip().removeprefix("<").removesuffix(">")


def _line(accepted_at: float, queue_id: str, message_id: str) -> bytes:
    entry = {"t": accepted_at, "q": queue_id, "m": message_id}
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def append(path: Path, envelopes: Iterable[Envelope]) -> None:
    """Append the envelopes' Message-IDs and fsync; raises ``OSError`` if it cannot."""
    lines = b"".join(
        _line(e.received_at, e.queue_id, normalise_message_id(e.message_id or ""))
        for e in envelopes
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, lines)
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: Path, queued: Iterable[Envelope], horizon: float) -> Known:
    """The ids in the log and of the queued envelopes, accepted at or after ``horizon``."""
    known: Known = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_bytes().splitlines():
            try:
                entry = json.loads(line)
                known[str(entry["m"])] = (QueueId(str(entry["q"])), float(entry["t"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a crash: its batch was never answered
    for envelope in queued:
        if envelope.message_id:
            key = normalise_message_id(envelope.message_id)
            known.setdefault(key, (envelope.queue_id, envelope.received_at))
    return {k: v for k, v in known.items() if v[1] >= horizon}


def encode(known: Known) -> bytes:
    """The compacted log holding exactly ``known``."""
    return b"".join(_line(t, q, m) for m, (q, t) in known.items())
