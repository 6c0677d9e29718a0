"""The spool's memory of accepted Message-IDs on disk: ``message-ids.log``, one JSON a line.

Each commit appends its batch's ids (``t`` accepted at, ``q`` queue id, ``m`` the message's
`dedupe_key`: its Message-ID without angle brackets and a digest of its recipients; a log
written by a version before holds the bare id there, see `is_legacy`) and fsyncs; recovery
reads the log back into the spool's `MessageIdIndex`, adds the keys of the queued envelopes,
drops those older than the dedupe window and rewrites the log compacted.

The append runs alongside the commit's other fsyncs, not after them, so a crash can leave a
batch's ids durable while its messages are not: known, such an id would make the client's
resubmission be answered with a queue id that is gone, and the message would be lost. So
an id counts only once its commit is *confirmed*: the first line of a batch carries
``"b":1`` (the batch is named by that line's queue id), and a later line carries ``"c"``
naming it, written only after the batch's commit completed: by the next commit's first line,
or, when a message of the latest batch is removed before any next commit (its id would
otherwise rest on its message file alone), by its own line appended again
(`confirmations`). Lines before the first batch mark (a log compacted at recovery or written
by a version before) are confirmed. An unconfirmed id whose message is queued is still known
(recovery adds the queued envelopes); one whose message is not was never acknowledged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from workers.mta.message_id_index import MessageIdIndex
from workers.mta.spares import fsync_directory, write_all, write_new
from workers.mta.spool_format import Envelope, QueueId

MESSAGE_IDS_LOG = "message-ids.log"
Entry = tuple[float, QueueId, str]
"""(accepted at, queue id, dedupe key) of one line."""
_RECIPIENTS_DIGEST = re.compile(r" [0-9a-f]{24}\Z")


def normalise_message_id(message_id: str) -> str:
    """A Message-ID without surrounding blanks and angle brackets."""
    return message_id.strip().removeprefix("<").removesuffix(">")


def dedupe_key(message_id: str, recipients: Iterable[str]) -> str:
    """What a resubmission is recognised by: its Message-ID *and* its envelope's recipients.

    The same Message-ID to other recipients is not a resubmission but another transaction of
    the same message: a client that splits a long recipient list over several (Postfix does
    past `smtp_destination_recipient_limit`), or sends each Bcc copy apart. Keyed by the id
    alone, such a transaction was answered "already queued" and never delivered. Recipients
    are compared without case, in any order, each once.
    """
    addresses = "\n".join(sorted({address.lower() for address in recipients}))
    digest = hashlib.blake2b(addresses.encode("utf-8", "surrogateescape"), digest_size=12)
    return f"{normalise_message_id(message_id)} {digest.hexdigest()}"


def envelope_key(envelope: Envelope) -> str | None:
    """The envelope's `dedupe_key`; None for a message without a Message-ID."""
    if not envelope.message_id:
        return None
    return dedupe_key(envelope.message_id, envelope.recipients)


def is_legacy(key: str) -> bool:
    """Whether a key was written by a version that keyed on the Message-ID alone."""
    return bool(key) and _RECIPIENTS_DIGEST.search(key) is None


def legacy_key(key: str) -> str | None:
    """The key a version before `dedupe_key` gave the same message: its bare Message-ID
    (None for a key `dedupe_key` did not make)."""
    message_id, space, _ = key.rpartition(" ")
    return message_id if space and message_id else None


def _line(
    accepted_at: float, queue_id: str, key: str, *, first: bool = False, confirms: str = ""
) -> bytes:
    entry: dict[str, object] = {"t": accepted_at, "q": queue_id, "m": key}
    if first:
        entry["b"] = 1
    if confirms:
        entry["c"] = confirms
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def confirmed_lines(path: Path, queued: Container[str]) -> Iterator[tuple[str, bytes]]:
    """(dedupe key, line without batch marks) of each entry of the log at `path` that counts:
    confirmed, or of a message in `queued` (recovery adds those from their envelopes). What
    a restore may take over: a failed commit's batch can be in a snapshot too."""
    with path.open("rb") as log:
        for accepted_at, queue_id, key in _confirmed(log):
            yield key, _line(accepted_at, queue_id, key)
    with path.open("rb") as log:
        for (accepted_at, queue_id, key), _, _ in _records(log):
            if queue_id in queued:
                yield key, _line(accepted_at, queue_id, key)


def _lines(envelopes: Iterable[Envelope]) -> Iterator[tuple[float, str, str]]:
    for e in envelopes:
        yield e.received_at, e.queue_id, envelope_key(e) or ""


def append_batch(path: Path, envelopes: list[Envelope], confirms: str = "") -> QueueId:
    """Append a commit's Message-IDs as a batch (confirming batch ``confirms``) and fsync.

    Returns the batch's name (its first queue id); raises ``OSError`` if it cannot.
    """
    lines = [
        _line(*entry, first=index == 0, confirms=confirms if index == 0 else "")
        for index, entry in enumerate(_lines(envelopes))
    ]
    _append(path, b"".join(lines))
    return envelopes[0].queue_id


def confirm(path: Path, batch: str, envelopes: Iterable[Envelope]) -> None:
    """Append the envelopes' ids again, confirming ``batch`` (their commit completed); fsync."""
    _append(path, b"".join(_line(*entry, confirms=batch) for entry in _lines(envelopes)))


def _append(path: Path, lines: bytes) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # An append torn by a failure (a full disk) leaves a fragment without its newline,
        # which must not glue onto this append's first line (it opens or confirms a batch).
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            lines = b"\n" + lines
        write_all(fd, lines)
        os.fsync(fd)
    finally:
        os.close(fd)


def load(
    path: Path, queued: Iterable[Envelope], horizon: float, index: MessageIdIndex, temp: Path
) -> bool:
    """Fill ``index`` with the keys in the log and of the queued envelopes accepted at or
    after ``horizon``, and rewrite the log compacted to exactly those (through ``temp``).
    Whether a key written by a version before `dedupe_key` is among them (`is_legacy`).

    Both passes stream the log: a million ids never sit in memory at once.
    """
    legacy = False
    with contextlib.suppress(FileNotFoundError), path.open("rb") as log:
        for entry in _confirmed(log):
            if entry[2] and entry[0] >= horizon:  # "": a message without a Message-ID
                index[entry[2]] = (entry[1], entry[0])
                legacy = legacy or is_legacy(entry[2])
    fd = write_new(temp, b"")
    try:
        with contextlib.suppress(FileNotFoundError), path.open("rb") as log:
            lines = []
            for (accepted_at, queue_id, key), first, confirms in _records(log):
                if confirms and not first:
                    continue  # appended again to confirm its batch: the line it repeats stays
                if accepted_at >= horizon and index.get(key) == (queue_id, accepted_at):
                    lines.append(_line(accepted_at, queue_id, key))
                if len(lines) >= 4096:
                    write_all(fd, b"".join(lines))
                    lines = []
            write_all(fd, b"".join(lines))
        for envelope in queued:
            queued_key = envelope_key(envelope)
            if queued_key and envelope.received_at >= horizon and index.get(queued_key) is None:
                index[queued_key] = (envelope.queue_id, envelope.received_at)
                write_all(fd, _line(envelope.received_at, envelope.queue_id, queued_key))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_directory(path.parent)
    return legacy


def _confirmed(log: BinaryIO) -> Iterator[Entry]:
    """The entries of confirmed batches (see the module's docstring), in the log's order
    but for a batch's, which come when its confirmation does."""
    waiting: dict[str, list[Entry]] = {}  # unconfirmed batches: normally the latest one
    batch: list[Entry] | None = None  # the open batch's entries; None: confirmed lines
    for entry, first, confirms in _records(log):  # a torn last line: never answered
        if first:
            batch = waiting.setdefault(entry[1], [])
        if confirms and (done := waiting.pop(confirms, None)) is not None:
            yield from done
            if done is batch:
                batch = None  # what follows in it: lines appended to confirm
        if batch is None:
            yield entry
        else:
            batch.append(entry)


def _records(log: BinaryIO) -> Iterator[tuple[Entry, bool, str]]:
    """`_record` of each readable line, confirmed or not."""
    for line in log:
        try:
            yield _record(line)
        except (ValueError, KeyError, TypeError):
            continue


def _record(line: bytes) -> tuple[Entry, bool, str]:
    """One line's entry, whether it opens a batch, and the batch it confirms ("" if none)."""
    entry = json.loads(line)
    parsed = (float(entry["t"]), QueueId(str(entry["q"])), str(entry["m"]))
    return parsed, bool(entry.get("b")), str(entry.get("c") or "")
