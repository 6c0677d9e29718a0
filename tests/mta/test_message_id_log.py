"""The Message-ID log beside the group commit: fsynced alongside it, counted once confirmed."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.spooled import envelope, key, message, record_fsyncs
from workers.mta.spool import MESSAGE_IDS_LOG, Spool


async def test_the_log_is_fsynced_alongside_the_directory_not_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The directory's fsync waits (bounded) for the log's to start: in a chain of three
    # fsyncs in a row (files, directory, log) it never would, and the 250 waited for all.
    log_fsynced = threading.Event()
    overlapped: list[bool] = []

    def fsynced(path: str) -> None:
        if path.endswith(f"/{MESSAGE_IDS_LOG}"):
            log_fsynced.set()
        elif path.endswith("/msg"):
            overlapped.append(log_fsynced.wait(timeout=5))

    async with Spool(tmp_path) as spool:
        spool.recover()
        record_fsyncs(monkeypatch, fsynced)
        await spool.accept(envelope(1, "<m1@warta.test>"), message(1))
    assert overlapped == [True]


def _lines(path: Path, *entries: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))


async def test_an_id_of_a_commit_never_confirmed_is_forgotten_unless_queued(
    tmp_path: Path,
) -> None:
    # What a crash can leave: the log's append of the last batch durable, its messages not
    # (their renames lost). Dedupe against it would answer the client's resubmission with
    # a queue id that is gone, and the message would never be delivered.
    async with Spool(tmp_path) as spool:
        spool.recover()
        queued = await spool.accept(envelope(1, "<queued@warta.test>"), message(1))
    now = time.time()
    lost = "0000000000000002deadbeef"
    delivered = "0000000000000001deadbeef"
    _lines(
        tmp_path / MESSAGE_IDS_LOG,
        {"t": now, "q": "0000000000000000deadbeef", "m": key("legacy@warta.test")},
        {"t": now, "q": delivered, "m": key("delivered@warta.test"), "b": 1},
        {"t": now, "q": lost, "m": key("lost@warta.test"), "b": 1, "c": delivered},
        {"t": now, "q": "0000000000000003deadbeef", "m": key("lost2@warta.test")},
        {"t": now, "q": queued, "m": key("queued@warta.test"), "b": 1},
    )

    restarted = Spool(tmp_path)
    restarted.recover()
    # The compacted log holds only what counts, without the batch marks.
    compacted = [json.loads(line) for line in (tmp_path / MESSAGE_IDS_LOG).read_text().splitlines()]
    assert sorted(entry["m"] for entry in compacted) == sorted(
        key(f"{name}@warta.test") for name in ("delivered", "legacy", "queued")
    )
    assert [entry for entry in compacted if "b" in entry or "c" in entry] == []
    assert await restarted.seen(key("<legacy@warta.test>")) == "0000000000000000deadbeef"
    assert await restarted.seen(key("<delivered@warta.test>")) == delivered  # confirmed by the next
    assert await restarted.seen(key("<lost@warta.test>")) is None
    assert await restarted.seen(key("<lost2@warta.test>")) is None
    assert await restarted.seen(key("<queued@warta.test>")) == queued  # its message says so
    async with restarted:
        again = await restarted.accept(envelope(2, "<lost@warta.test>"), message(2))
    assert again != lost


async def test_an_id_logged_by_a_version_before_recipients_counted_still_dedupes(
    tmp_path: Path,
) -> None:
    # Versions before `dedupe_key` logged the bare Message-ID. Within the window after an
    # upgrade, a resubmission of what they accepted is still recognised (by its id alone,
    # as they did); what this version accepts is keyed with its recipients.
    now = time.time()
    _lines(
        tmp_path / MESSAGE_IDS_LOG,
        {"t": now, "q": "0000000000000001deadbeef", "m": "before@warta.test"},
    )
    restarted = Spool(tmp_path)
    restarted.recover()
    assert await restarted.seen(key("<before@warta.test>")) == "0000000000000001deadbeef"
    async with restarted:
        again = await restarted.accept(envelope(1, "<before@warta.test>"), message(1))
        assert again == "0000000000000001deadbeef"
        new = await restarted.accept(envelope(2, "<after@warta.test>"), message(2))
    assert [path.stem for path in restarted.messages.iterdir()] == [new]  # one file: `after`
    # Once no bare id is left in the log (the window passed), none is looked up.
    (tmp_path / MESSAGE_IDS_LOG).write_text("")
    later = Spool(tmp_path)
    later.recover()
    assert later.legacy_keys is False
    assert await later.seen(key("<after@warta.test>")) == new


async def test_removing_a_message_of_the_latest_batch_confirms_it_first(tmp_path: Path) -> None:
    # No later commit confirms the batch: the removal does, before the file is gone.
    async with Spool(tmp_path) as spool:
        spool.recover()
        first = await spool.accept(envelope(1, "<m1@warta.test>"), message(1))
        second = await spool.accept(envelope(2, "<m2@warta.test>"), message(2))
        await spool.remove(second)
        await spool.remove(first)  # its batch was confirmed by the second's commit
    lines = [json.loads(line) for line in (tmp_path / MESSAGE_IDS_LOG).read_text().splitlines()]
    assert [(e["m"], e.get("c")) for e in lines] == [
        (key("m1@warta.test"), None),
        (key("m2@warta.test"), first),
        (key("m2@warta.test"), second),
    ]
    restarted = Spool(tmp_path)
    assert restarted.recover() == []
    assert await restarted.seen(key("<m1@warta.test>")) == first
    assert await restarted.seen(key("<m2@warta.test>")) == second


async def test_an_append_torn_by_a_failure_does_not_swallow_the_next_batch(
    tmp_path: Path,
) -> None:
    # A full disk can tear an append mid-line; the next append's first line opens its batch
    # and confirms the one before, and glued onto the fragment both would be lost.
    async with Spool(tmp_path) as spool:
        spool.recover()
        first = await spool.accept(envelope(1, "<m1@warta.test>"), message(1))
        with (tmp_path / MESSAGE_IDS_LOG).open("ab") as log:
            log.write(b'{"t":1,"q":"00000000000000')
        second = await spool.accept(envelope(2, "<m2@warta.test>"), message(2))
        await spool.accept(envelope(3, "<m3@warta.test>"), message(3))
        await spool.remove(first)
        await spool.remove(second)  # delivered: only the log knows them now
    restarted = Spool(tmp_path)
    restarted.recover()
    assert await restarted.seen(key("<m1@warta.test>")) == first
    assert await restarted.seen(key("<m2@warta.test>")) == second


def test_a_restore_takes_over_confirmed_ids_only(tmp_path: Path) -> None:
    # A snapshot can hold the batch of a commit that failed (its clients were answered
    # 451): dedupe against it after a restore would refuse their resubmissions.
    from app.backup.restore import _union_of_message_ids

    now = time.time()
    _lines(
        tmp_path / "instance-0" / MESSAGE_IDS_LOG,
        {"t": now, "q": "0000000000000001deadbeef", "m": "kept@warta.test", "b": 1},
        {"t": now, "q": "0000000000000002deadbeef", "m": "failed@warta.test", "b": 1},
        {
            "t": now,
            "q": "0000000000000003deadbeef",
            "m": "next@warta.test",
            "b": 1,
            "c": "0000000000000001deadbeef",
        },
    )
    union = [json.loads(line) for line in _union_of_message_ids(tmp_path).split()]
    assert [entry["m"] for entry in union] == ["kept@warta.test"]
    assert all("b" not in entry and "c" not in entry for entry in union)


async def test_a_failed_commit_after_a_failed_log_append_never_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A log append fails (a full disk): its ids are carried to the next commit's append.
    # That commit fails after its append (its clients are answered 451); the one after
    # carries the same ids again. Named by a carried id, both batches had one name, and
    # confirming the third counted the failed commit's ids too.
    from workers.mta import group_commit, message_id_log

    append, stage = message_id_log.append_batch, group_commit.stage_parallel
    faults = {"append": 1, "stage": 0}

    def flaky_append(*args: Any, **kwargs: Any) -> Any:
        if faults["append"]:
            faults["append"] -= 1
            raise OSError(28, "No space left on device")
        return append(*args, **kwargs)

    def flaky_stage(*args: Any, **kwargs: Any) -> Any:
        if faults["stage"]:
            faults["stage"] -= 1
            raise OSError(5, "Input/output error")
        return stage(*args, **kwargs)

    monkeypatch.setattr(message_id_log, "append_batch", flaky_append)
    monkeypatch.setattr(group_commit, "stage_parallel", flaky_stage)
    async with Spool(tmp_path) as spool:
        spool.recover()
        first = await spool.accept(envelope(1, "<m1@warta.test>"), message(1))
        faults["stage"] = 1
        with pytest.raises(OSError):
            await spool.accept(envelope(2, "<failed@warta.test>"), message(2))
        await spool.accept(envelope(3, "<m3@warta.test>"), message(3))
        await spool.accept(envelope(4, "<m4@warta.test>"), message(4))
    restarted = Spool(tmp_path)
    restarted.recover()
    assert await restarted.seen(key("<failed@warta.test>")) is None
    assert await restarted.seen(key("<m1@warta.test>")) == first
