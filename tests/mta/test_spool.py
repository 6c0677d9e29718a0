"""The spool: durable before acknowledgement, group commit, crash recovery, Message-ID dedupe."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
from pathlib import Path

import pytest

from tests.helpers.api import eventually
from tests.helpers.sigkill import kill_mid_batch
from tests.helpers.spooled import envelope, key, message, record_fsyncs
from workers.mta import spool as spool_module
from workers.mta import spool_format
from workers.mta.spool import (
    DEFAULT_DEDUPE_WINDOW,
    Envelope,
    QueueId,
    RecipientStatus,
    Spool,
)

DAY = 24 * 3600.0


class Clock:
    """A settable clock for the dedupe window."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def temp_files(spool_directory: Path) -> list[Path]:
    return [p for p in (spool_directory / "tmp").rglob("*") if p.is_file()]


async def test_accept_writes_complete_files(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        queue_id = await spool.accept(envelope(1, "<m1@warta.test>"), message(1))
        # One file: the envelope on its first line, then the bytes as received.
        raw = spool.message_path(queue_id).read_bytes()
        assert spool_format.body(raw) == message(1)
        assert raw.startswith(spool_format.MARKER)
        stored = spool_format.envelope_in(spool_format.read_head(spool.envelope_path(queue_id)))
        assert stored.queue_id == queue_id
        assert stored.mail_from == "sender1@warta.test"
        assert stored.pending() == ["a@example.com", "b@example.net"]
        assert spool.load(queue_id) == message(1)
        assert temp_files(tmp_path) == []
        assert list(spool.envelopes.iterdir()) == []  # no second file a message
        assert spool.stats.commits == 1
        assert spool.stats.last_batch_size == 1


async def test_null_sender_and_update_round_trip(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        env = Envelope(mail_from="", recipients=["postmaster@example.com"])
        queue_id = await spool.accept(env, b"Subject: bounce\r\n\r\nx\r\n")
        env.states["postmaster@example.com"].status = RecipientStatus.DELIVERED
        env.states["postmaster@example.com"].last_reply = "250 2.0.0 OK"
        env.states["postmaster@example.com"].attempts = 1
        env.first_attempt_at = 5.0
        await spool.update(env)
    [recovered] = Spool(tmp_path).recover()
    assert recovered == env
    assert recovered.queue_id == queue_id
    assert recovered.mail_from == ""
    assert recovered.pending() == []


async def test_queue_ids_sort_by_acceptance(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        ids = [await spool.accept(envelope(n), message(n)) for n in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


async def test_concurrent_accepts_share_fsyncs_and_wait_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []

    def fsynced(path: str) -> None:
        events.append(("fsync", path))
        if path.endswith("/message-ids.log"):  # what the log's fsync makes durable
            events.append(("logged", Path(path).read_text()))

    record_fsyncs(monkeypatch, fsynced)
    accepts = 60

    async with Spool(tmp_path) as spool:

        async def submit(n: int) -> QueueId:
            queue_id = await spool.accept(envelope(n, f"<m{n}@warta.test>"), message(n))
            events.append(("resolved", queue_id))
            # Acknowledged means complete and in place.
            assert spool.load(queue_id) == message(n)
            assert spool.envelope_path(queue_id).exists()
            return queue_id

        ids = await asyncio.gather(*(submit(n) for n in range(accepts)))
        assert spool.stats.commits < accepts
        assert spool.stats.accepted == accepts

    def index(kind: str, path: str, after: int = -1) -> int:
        for i, (event_kind, event_path) in enumerate(events):
            if i > after and event_kind == kind and event_path.endswith(path):
                return i
        raise AssertionError(f"no {kind} {path} after {after}")

    temp, msg, env = (str((tmp_path / d).resolve()) for d in ("tmp", "msg", "env"))
    for queue_id in ids:
        resolved = index("resolved", queue_id)
        files = index("fsync", f"/{queue_id}.eml")  # the one file, envelope inside
        assert events[files][1].startswith(temp)
        assert files < resolved
        assert index("fsync", msg, files) < resolved
        # The log is fsynced alongside the files, not after them, but before the 250 too.
        assert any(k == "logged" and queue_id in text for k, text in events[:resolved])
    directory_fsyncs = sum(1 for kind, path in events if kind == "fsync" and path == msg)
    assert directory_fsyncs == spool.stats.commits
    # Nothing else per message: no envelope file, and env/ is not fsynced by acceptance.
    assert [path for kind, path in events if path.endswith(".json") or path == env] == []


async def test_remove_forgets_message_but_keeps_its_message_id(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        queue_id = await spool.accept(envelope(1, "<m1@warta.test>"), message(1))
        await spool.remove(queue_id)
        assert not spool.message_path(queue_id).exists()
        assert not spool.envelope_path(queue_id).exists()
    restarted = Spool(tmp_path)
    assert restarted.recover() == []
    assert await restarted.seen(key("<m1@warta.test>")) == queue_id


async def test_recover_drops_orphans_and_temp_files(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        kept = await spool.accept(envelope(1), message(1))
    orphan = tmp_path / "msg" / "0000000000000001deadbeef.eml"
    orphan.write_bytes(b"never acknowledged")
    half_written = tmp_path / "tmp" / "3" / "0000000000000002deadbeef.eml"
    half_written.write_bytes(b"Subject: tor")

    recovered = Spool(tmp_path).recover()

    assert [e.queue_id for e in recovered] == [kept]
    assert not orphan.exists()
    assert not half_written.exists()
    assert Spool(tmp_path).load(kept) == message(1)


async def test_recover_quarantines_corrupt_envelopes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Spool(tmp_path) as spool:
        missing_envelope = envelope(1)
        missing = await spool.accept(missing_envelope, message(1))
        garbled = await spool.accept(envelope(2), message(2))
        good = await spool.accept(envelope(3), message(3))
    # Envelopes in env/ files (layout 1's, or too many changes to append): one has lost
    # its message, the other is garbled.
    spool.changed_envelope_path(missing).write_bytes(missing_envelope.to_json())
    spool.message_path(missing).unlink()
    spool.changed_envelope_path(garbled).write_bytes(b'{"mail_from": ')

    with caplog.at_level(logging.INFO, logger="workers.mta.spool"):
        recovered = Spool(tmp_path).recover()

    assert [e.queue_id for e in recovered] == [good]
    corrupt = tmp_path / "corrupt"
    assert sorted(p.name for p in corrupt.iterdir()) == sorted(
        [f"{missing}.json", f"{garbled}.json", f"{garbled}.eml"]
    )
    assert spool_format.body((corrupt / f"{garbled}.eml").read_bytes()) == message(2)
    assert not spool.changed_envelope_path(missing).exists()
    # An envelope left alone is what a crash between a removal's two steps leaves: no alarm.
    # An unreadable one is.
    levels = {record.getMessage().rpartition(" ")[0]: record.levelno for record in caplog.records}
    assert levels == {
        f"spool: envelope {missing} has no message;": logging.INFO,
        f"spool: envelope {garbled} is unreadable;": logging.ERROR,
    }


async def test_changes_are_appended_to_the_message_file_and_a_torn_one_is_ignored(
    tmp_path: Path,
) -> None:
    async with Spool(tmp_path) as spool:
        env = envelope(1)
        queue_id = await spool.accept(env, message(1))
        inode = spool.message_path(queue_id).stat().st_ino
        for attempt in (1, 2):
            env.states["a@example.com"].attempts = attempt
            env.next_attempt_at = 1000.0 * attempt
            await spool.update(env)
        assert spool.message_path(queue_id).stat().st_ino == inode  # appended, not replaced
        assert list(spool.envelopes.iterdir()) == []
        assert spool.load(queue_id) == message(1)
        assert await spool.read_envelope(queue_id) == env
    # A crash in the middle of a third change, never acknowledged: the second one stands.
    with spool.message_path(queue_id).open("ab") as file:
        file.write(b'\n{"mail_from":"sender1@war')
    [recovered] = Spool(tmp_path).recover()
    assert recovered == env
    assert Spool(tmp_path).load(queue_id) == message(1)


async def test_changes_beyond_the_limit_go_to_the_envelope_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "TAIL_LIMIT", 2_000)
    async with Spool(tmp_path) as spool:
        env = envelope(1)
        queue_id = await spool.accept(env, message(1))
        size = spool.message_path(queue_id).stat().st_size
        for attempt in range(1, 10):
            env.states["a@example.com"].attempts = attempt
            await spool.update(env)
        assert spool.message_path(queue_id).stat().st_size <= size + 2_000
        assert Envelope.from_json(spool.changed_envelope_path(queue_id).read_bytes()) == env
        assert await spool.read_envelope(queue_id) == env
    [recovered] = Spool(tmp_path).recover()
    assert recovered == env
    async with Spool(tmp_path) as spool:
        spool.recover()
        await spool.remove(queue_id)
    assert list((tmp_path / "msg").iterdir()) == list((tmp_path / "env").iterdir()) == []


async def test_an_envelope_file_that_could_not_be_written_is_not_counted_as_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "TAIL_LIMIT", 0)  # every change in an envelope file
    async with Spool(tmp_path) as spool:
        spool.recover()
        env = envelope(1)
        queue_id = await spool.accept(env, message(1))
        # A real failure, no mock: env/ is gone, so renaming the envelope into it fails.
        spool.envelopes.rmdir()
        env.next_attempt_at = 1000.0
        with pytest.raises(FileNotFoundError):
            await spool.update(env)
        spool.envelopes.mkdir()
        assert queue_id not in spool._changed
        stored = await spool.read_envelope(queue_id)
        assert stored is not None and stored.next_attempt_at == env.received_at

        synced = record_fsyncs(monkeypatch)
        await spool.remove(queue_id)
        # No env/ file to take away, so no fsync of env/ either.
        assert synced == [str(spool.messages.resolve())]


async def test_recover_quarantines_a_message_whose_first_line_is_garbled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Spool(tmp_path) as spool:
        garbled = await spool.accept(envelope(1), message(1))
        good = await spool.accept(envelope(2), message(2))
    path = spool.message_path(garbled)
    path.write_bytes(spool_format.MARKER + b'{"mail_from": \n' + message(1))

    recovered = Spool(tmp_path).recover()

    assert [e.queue_id for e in recovered] == [good]
    assert [p.name for p in (tmp_path / "corrupt").iterdir()] == [f"{garbled}.eml"]
    assert "unreadable" in caplog.text


async def test_duplicate_message_id_is_acknowledged_without_a_second_copy(
    tmp_path: Path,
) -> None:
    async with Spool(tmp_path) as spool:
        first, second = await asyncio.gather(
            spool.accept(envelope(1, "<dup@warta.test>"), message(1)),
            spool.accept(envelope(1, "<dup@warta.test>"), message(1)),
        )
        third = await spool.accept(envelope(1, "dup@warta.test"), message(1))
        assert first == second == third
        assert await spool.seen(key("<dup@warta.test>")) == first
        assert await spool.seen(key("<other@warta.test>")) is None
    assert len(list((tmp_path / "env").iterdir())) == 0  # the envelope is in the message file
    assert len(list((tmp_path / "msg").iterdir())) == 1


async def test_message_id_dedupe_survives_restart_and_expires(tmp_path: Path) -> None:
    clock = Clock()
    async with Spool(tmp_path, clock=clock) as spool:
        old = await spool.accept(envelope(1, "<old@warta.test>"), message(1))
        clock.now += 6 * DAY
        recent = await spool.accept(envelope(2, "<recent@warta.test>"), message(2))
        await spool.remove(old)

    clock.now += 0.5 * DAY
    restarted = Spool(tmp_path, clock=clock)
    assert [e.queue_id for e in restarted.recover()] == [recent]
    assert await restarted.seen(key("<old@warta.test>")) == old
    async with restarted:
        assert await restarted.accept(envelope(1, "<old@warta.test>"), message(1)) == old
    assert len(list((tmp_path / "msg").iterdir())) == 1

    clock.now += 0.5 * DAY + 1  # old is now older than the 7-day window
    assert DEFAULT_DEDUPE_WINDOW == 7 * DAY
    assert await restarted.seen(key("<old@warta.test>")) is None
    assert await restarted.seen(key("<recent@warta.test>")) == recent

    compacted = Spool(tmp_path, clock=clock)
    compacted.recover()
    assert await compacted.seen(key("<old@warta.test>")) is None
    log = (tmp_path / "message-ids.log").read_text().splitlines()
    assert [json.loads(line)["m"] for line in log] == [key("recent@warta.test")]
    async with compacted:
        fresh = await compacted.accept(envelope(1, "<old@warta.test>"), message(1))
    assert fresh != old


async def test_torn_message_id_log_line_is_ignored(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        queue_id = await spool.accept(envelope(1, "<m1@warta.test>"), message(1))
    with (tmp_path / "message-ids.log").open("ab") as log:
        log.write(b'{"t":1.0,"q":"00')
    restarted = Spool(tmp_path)
    restarted.recover()
    assert await restarted.seen(key("<m1@warta.test>")) == queue_id


CHILD = textwrap.dedent(
    """
    import asyncio, itertools, sys
    from pathlib import Path
    from tests.helpers.spooled import envelope, message
    from workers.mta.spool import Spool

    async def writer(spool, counter):
        while True:
            n = next(counter)
            queue_id = await spool.accept(envelope(n, f"<m{n}@warta.test>"), message(n, 40_000))
            print(queue_id, n, flush=True)

    async def main():
        spool = Spool(Path(sys.argv[1]))
        spool.recover()
        counter = itertools.count()
        await asyncio.gather(*(writer(spool, counter) for _ in range(8)))

    asyncio.run(main())
    """
)


def test_recover_after_sigkill_keeps_every_acknowledged_message(tmp_path: Path) -> None:
    # Killed mid-commit: while a batch is being written and none of it is acknowledged.
    acknowledged = kill_mid_batch(CHILD, tmp_path, lambda: bool(temp_files(tmp_path)))
    assert temp_files(tmp_path), "the kill did not land mid-commit"

    spool = Spool(tmp_path)
    recovered = {e.queue_id: e for e in spool.recover()}

    assert set(acknowledged) <= set(recovered)
    for queue_id, env in recovered.items():
        n = int(env.mail_from.removeprefix("sender").removesuffix("@warta.test"))
        assert spool.load(queue_id) == message(n, 40_000)
        assert env.message_id == f"<m{n}@warta.test>"
    for queue_id, count in acknowledged.items():
        assert asyncio.run(spool.seen(key(f"<m{count}@warta.test>"))) == queue_id
    assert sorted(p.stem for p in (tmp_path / "msg").iterdir()) == sorted(recovered)
    assert temp_files(tmp_path) == []


async def test_a_commit_is_announced_though_its_waiter_was_cancelled(tmp_path: Path) -> None:
    async with Spool(tmp_path, commit_delay=0.2) as spool:
        announced: list[Envelope] = []
        spool.add_listener(announced.append)
        waiter = asyncio.create_task(spool.accept(envelope(1, "<m1@warta.test>"), message(1)))

        async def waiting() -> bool:
            return spool.waiting == 1

        await eventually(waiting, within=5, what="the message waiting for its commit")
        waiter.cancel()  # the SMTP session of a client that went away

        async def committed() -> bool:
            return spool.waiting == 0

        await eventually(committed, within=5, what="the commit")
        assert waiter.cancelled()
        assert [e.queue_id for e in announced] == list(await spool.queued())
        assert await spool.seen(key("<m1@warta.test>")) == announced[0].queue_id


async def test_queued_lists_only_committed_messages(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        first = await spool.accept(envelope(1), message(1))
        second = await spool.accept(envelope(2), message(2))
        assert sorted(await spool.queued()) == sorted([first, second])
        read = await spool.read_envelope(first)
        assert read is not None and read.queue_id == first
        await spool.remove(first)
        assert await spool.queued() == [second]
        assert await spool.read_envelope(first) is None


async def test_a_message_id_log_that_cannot_be_written_still_acknowledges_and_dedupes(
    tmp_path: Path,
) -> None:
    # A real write failure, no mock: the log's path is a directory, so appending to it fails
    # with an OSError after the message files are already in place (as a full disk would).
    async with Spool(tmp_path) as spool:
        spool.recover()
        spool.message_ids_log.unlink(missing_ok=True)
        spool.message_ids_log.mkdir()
        queue_id = await spool.accept(envelope(1, "<m1@warta.test>"), message(1))
        assert spool.load(queue_id) == message(1)
        # The resubmission after the client's timeout is recognised, not queued again.
        again = await spool.accept(envelope(1, "<m1@warta.test>"), message(1))
        assert again == queue_id
        assert len(list(spool.messages.iterdir())) == 1
        # Once the log can be written, the ids held in memory reach it with the next commit.
        spool.message_ids_log.rmdir()
        await spool.accept(envelope(2, "<m2@warta.test>"), message(2))
    logged = [json.loads(line)["m"] for line in spool.message_ids_log.read_text().splitlines()]
    assert sorted(logged) == [key("m1@warta.test"), key("m2@warta.test")]


async def test_queued_envelopes_reads_a_spool_without_recovering_it(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        plain = await spool.accept(envelope(1), message(1))
        deferred_envelope = envelope(2)
        deferred = await spool.accept(deferred_envelope, message(2))
        deferred_envelope.states["a@example.com"].attempts = 2
        await spool.update(deferred_envelope)
        gone = await spool.accept(envelope(3), message(3))
        await spool.remove(gone)
        found = spool_format.queued_envelopes(tmp_path)
    assert sorted(found) == sorted([plain, deferred])
    assert found[plain].mail_from == "sender1@warta.test"
    assert found[deferred] == deferred_envelope


async def test_concurrent_changes_are_appended_with_no_directory_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Spool(tmp_path) as spool:
        envelopes = [envelope(n) for n in range(20)]
        ids = await asyncio.gather(*(spool.accept(e, message(n)) for n, e in enumerate(envelopes)))
        synced = record_fsyncs(monkeypatch)
        for n, env in enumerate(envelopes):
            env.next_attempt_at = 1000.0 + n
        await asyncio.gather(*(spool.update(env) for env in envelopes))
        # Each message file once, durable before update returned; nothing else.
        assert sorted(synced) == sorted(str(spool.message_path(q).resolve()) for q in ids)
        for n, queue_id in enumerate(ids):
            stored = await spool.read_envelope(queue_id)
            assert stored is not None and stored.next_attempt_at == 1000.0 + n
