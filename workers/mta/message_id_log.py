"""The spool's memory of accepted Message-IDs on disk: ``message-ids.log``, one JSON a line.

Each commit appends its batch's ids (``t`` accepted at, ``q`` queue id, ``m`` the id without
angle brackets) and fsyncs; recovery reads the log back into the spool's `MessageIdIndex`,
adds the ids of the queued envelopes, drops those older than the dedupe window and rewrites
the log compacted.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from workers.mta.message_id_index import MessageIdIndex
from workers.mta.spares import fsync_directory, write_all, write_new
from workers.mta.spool_format import Envelope, QueueId

MESSAGE_IDS_LOG = "message-ids.log"


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
        write_all(fd, lines)
        os.fsync(fd)
    finally:
        os.close(fd)


def load(
    path: Path, queued: Iterable[Envelope], horizon: float, index: MessageIdIndex, temp: Path
) -> None:
    """Fill ``index`` with the ids in the log and of the queued envelopes accepted at or
    after ``horizon``, and rewrite the log compacted to exactly those (through ``temp``).

    Both passes stream the log: a million ids never sit in memory at once.
    """
    with contextlib.suppress(FileNotFoundError), path.open("rb") as log:
        for entry in _entries(log):
            if entry[0] >= horizon:
                index[entry[2]] = (entry[1], entry[0])
    fd = write_new(temp, b"")
    try:
        with contextlib.suppress(FileNotFoundError), path.open("rb") as log:
            lines = []
            for accepted_at, queue_id, message_id in _entries(log):
                if accepted_at >= horizon and index.get(message_id) == (queue_id, accepted_at):
                    lines.append(_line(accepted_at, queue_id, message_id))
                if len(lines) >= 4096:
                    write_all(fd, b"".join(lines))
                    lines = []
            write_all(fd, b"".join(lines))
        for envelope in queued:
            key = normalise_message_id(envelope.message_id or "")
            if key and envelope.received_at >= horizon and index.get(key) is None:
                index[key] = (envelope.queue_id, envelope.received_at)
                write_all(fd, _line(envelope.received_at, envelope.queue_id, key))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_directory(path.parent)


def _entries(log: BinaryIO) -> Iterator[tuple[float, QueueId, str]]:
    """(accepted at, queue id, Message-ID) of each readable line."""
    for line in log:
        try:
            entry = json.loads(line)
            yield float(entry["t"]), QueueId(str(entry["q"])), str(entry["m"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a crash: its batch was never answered
