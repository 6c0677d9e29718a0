"""Spare files: the spool reuses the inodes of removed files and rewritten envelopes."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers.spooled import envelope, message, record_fsyncs
from workers.mta import spool as spool_module
from workers.mta import spool_format
from workers.mta.spares import SparePool, exchange, in_lanes
from workers.mta.spool import Envelope, QueueId, RecipientStatus, Spool


def inodes(*directories: Path) -> set[int]:
    return {path.stat().st_ino for directory in directories for path in directory.iterdir()}


async def test_a_removed_message_s_files_carry_the_next_messages(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        spool.recover()
        first = [await spool.accept(envelope(n), message(n, 9_000)) for n in range(5)]
        used = inodes(spool.messages, spool.envelopes)
        for queue_id in first:
            await spool.remove(queue_id)
        assert inodes(spool.spares.directory) == used
        assert list(spool.messages.iterdir()) == list(spool.envelopes.iterdir()) == []

        # Shorter messages over longer spares: each file is cut to its new length.
        second = [await spool.accept(envelope(n), message(n, 100)) for n in range(5, 10)]

        assert inodes(spool.messages, spool.envelopes) == used
        assert list(spool.spares.directory.iterdir()) == []
        for n, queue_id in zip(range(5, 10), second, strict=True):
            assert spool.load(queue_id) == message(n, 100)
            stored = await spool.read_envelope(queue_id)
            assert stored is not None and stored.queue_id == queue_id
    recovered = Spool(tmp_path).recover()
    assert sorted(e.queue_id for e in recovered) == sorted(second)


async def test_a_rewritten_envelope_leaves_its_old_file_as_a_spare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every change in the envelope file (as when appending to the message file would pass
    # the limit, see test_spool): each rewrite replaces it.
    monkeypatch.setattr(spool_module, "TAIL_LIMIT", 0)
    async with Spool(tmp_path) as spool:
        spool.recover()
        env = envelope(1)
        queue_id = await spool.accept(env, message(1))
        message_file = spool.message_path(queue_id).stat()
        # The first change writes the envelope's own file; the message file is untouched.
        env.states["a@example.com"].attempts = 1
        await spool.update(env)
        assert spool.message_path(queue_id).stat().st_mtime_ns == message_file.st_mtime_ns
        before = spool.changed_envelope_path(queue_id).stat().st_ino
        env.states["a@example.com"].status = RecipientStatus.DELIVERED
        env.next_attempt_at = 1234.0
        await spool.update(env)
        assert inodes(spool.spares.directory) == {before}
        assert Envelope.from_json(spool.changed_envelope_path(queue_id).read_bytes()) == env
        # The next rewrite is written over that spare.
        env.states["b@example.net"].attempts = 3
        await spool.update(env)
        assert spool.changed_envelope_path(queue_id).stat().st_ino == before
    [recovered] = Spool(tmp_path).recover()
    assert recovered == env


async def test_concurrent_rewrites_share_one_directory_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "TAIL_LIMIT", 0)  # every change in an envelope file
    async with Spool(tmp_path) as spool:
        envelopes = [envelope(n) for n in range(20)]
        ids: list[QueueId] = list(
            await asyncio.gather(*(spool.accept(e, message(n)) for n, e in enumerate(envelopes)))
        )
        directory = str(spool.envelopes.resolve())
        synced = record_fsyncs(monkeypatch)
        for n, env in enumerate(envelopes):
            env.next_attempt_at = 1000.0 + n
        await asyncio.gather(*(spool.update(env) for env in envelopes))
        assert 1 <= synced.count(directory) < len(envelopes)
        for n, queue_id in enumerate(ids):
            stored = Envelope.from_json(spool.changed_envelope_path(queue_id).read_bytes())
            assert stored.next_attempt_at == 1000.0 + n


def test_the_pool_is_bounded_and_unlinks_beyond_it(tmp_path: Path) -> None:
    pool = SparePool(tmp_path / "spare", limit=2)
    files = [tmp_path / f"f{n}" for n in range(3)]
    retired = []
    for path in files:
        path.write_bytes(b"x")
        retired.append(pool.retire(path))
    assert retired[2] is None  # held back ones count against the limit
    pool.release(spare for spare in retired if spare is not None)
    assert len(pool) == 2
    assert len(list(pool.directory.iterdir())) == 2
    assert not any(path.exists() for path in files)
    restarted = SparePool(tmp_path / "spare", limit=1)
    restarted.load()
    assert len(restarted) == 1
    assert len(list(pool.directory.iterdir())) == 1  # what a smaller pool cannot keep goes


def test_exchange_swaps_two_files_and_reports_a_missing_one(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"1")
    second.write_bytes(b"2")
    assert exchange(first, second)
    assert (first.read_bytes(), second.read_bytes()) == (b"2", b"1")
    assert not exchange(first, tmp_path / "missing")
    assert first.read_bytes() == b"2"


async def test_a_message_a_snapshot_links_is_never_written_over(tmp_path: Path) -> None:
    async with Spool(tmp_path / "spool") as spool:
        spool.recover()
        queue_id = await spool.accept(envelope(1), message(1, 2_000))
        linked = tmp_path / "snapshot.eml"
        os.link(spool.messages / f"{queue_id}.eml", linked)  # as workers.mta.snapshot does
        await spool.remove(queue_id)
        second = await spool.accept(envelope(2), message(2, 2_000))

        assert spool_format.body(linked.read_bytes()) == message(1, 2_000)
        assert spool.load(second) == message(2, 2_000)
        assert linked.stat().st_nlink == 1  # the spool let go of it


def test_a_retired_file_is_handed_out_only_once_released(tmp_path: Path) -> None:
    pool = SparePool(tmp_path / "spare")
    removed = tmp_path / "removed.eml"
    removed.write_bytes(b"the removed message")
    held = pool.retire(removed)
    [spare] = pool.directory.iterdir()
    assert not removed.exists()

    # Before its removal is durable (the caller has not fsynced the directory yet), a file
    # is written anew: the spare keeps the bytes a crash could still bring back.
    written, fd = pool.write(tmp_path / "fresh", b"the next message")
    os.close(fd)
    assert written == tmp_path / "fresh"
    assert spare.read_bytes() == b"the removed message"

    assert held == spare
    pool.release([spare])
    written, fd = pool.write(tmp_path / "later", b"a later message")
    os.close(fd)
    assert written == spare
    assert spare.read_bytes() == b"a later message"


class DirectoryFsyncs:
    """Spares free for the taking at each fsync of a spool directory (then the fsync)."""

    def __init__(self, spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
        self.free: list[tuple[str, int]] = []
        names = {str(spool.messages.resolve()): "msg", str(spool.envelopes.resolve()): "env"}

        def before(path: str) -> None:
            if (name := names.get(path)) is not None:
                self.free.append((name, len(spool.spares)))

        record_fsyncs(monkeypatch, before)


async def test_a_removed_message_s_file_is_free_only_after_msg_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Spool(tmp_path) as spool:
        spool.recover()
        queue_id = await spool.accept(envelope(1), message(1))
        fsyncs = DirectoryFsyncs(spool, monkeypatch)
        await spool.remove(queue_id)
        # While msg/ is fsynced a crash could still bring the message's entry back: its
        # file must not yet be free to carry another message.
        assert fsyncs.free == [("msg", 0)]
        assert len(spool.spares) == 1


async def test_a_replaced_envelope_s_file_is_free_only_after_env_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "TAIL_LIMIT", 0)  # every change in an envelope file
    async with Spool(tmp_path) as spool:
        spool.recover()
        env = envelope(1)
        queue_id = await spool.accept(env, message(1))
        await spool.remove(await spool.accept(envelope(2), message(2)))  # one spare to use
        env.next_attempt_at = 1000.0
        await spool.update(env)  # the first env/ file, written over that spare
        fsyncs = DirectoryFsyncs(spool, monkeypatch)
        env.next_attempt_at = 2000.0
        await spool.update(env)  # swapped with its replacement: the old file is retired
        assert fsyncs.free == [("env", 0)]
        assert len(spool.spares) == 1
        stored = await spool.read_envelope(queue_id)
        assert stored is not None and stored.next_attempt_at == 2000.0


def test_in_lanes_keeps_the_order_runs_a_lane_here_and_fails_after_every_lane_ended() -> None:
    threads: dict[int, str] = {}
    ended: list[int] = []

    def run(lane: list[int]) -> list[int]:
        for item in lane:
            threads[item] = threading.current_thread().name
        if 3 in lane:
            raise OSError("disk full")
        ended.extend(lane[:1])
        return [item * 10 for item in lane]

    with ThreadPoolExecutor(4) as pool:
        assert in_lanes(pool, 3, [0, 1, 2, 4, 5], run) == [0, 10, 20, 40, 50]
        assert {threads[0], threads[4]} == {threading.current_thread().name}  # lane 0, here
        assert threads[1] != threading.current_thread().name
        ended.clear()
        with pytest.raises(OSError, match="disk full"):
            in_lanes(pool, 3, list(range(9)), run)  # lane 0 holds 3: fails here, first
        assert sorted(ended) == [1, 2]  # the other lanes were not abandoned mid-way
        assert in_lanes(pool, 3, [7], run) == [70]
        assert in_lanes(pool, 3, [], run) == []
