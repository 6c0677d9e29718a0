"""A backup's snapshot of a spool while messages are committed: never half a batch."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

from workers.mta import spool_format
from workers.mta.snapshot import SpoolSnapshot, spool_directories, take
from workers.mta.spool import MESSAGE_IDS_LOG, Envelope, Spool


def _consistent(snapshot: SpoolSnapshot) -> tuple[int, list[str]]:
    """(Message-IDs the snapshot knows, those of them whose envelope or message it lacks)."""
    log = (snapshot.directory / MESSAGE_IDS_LOG).read_bytes()[: snapshot.message_ids_bytes]
    # The message file holds the envelope (env/ only has those changed since acceptance):
    # a message counts if its file is there and an envelope in it (or in env/) reads.
    queued = spool_format.queued_envelopes(snapshot.directory)
    known = [json.loads(line) for line in log.splitlines()]
    missing = [e["m"] for e in known if e["q"] not in queued]
    return len(known), missing


async def test_a_snapshot_taken_during_commits_holds_each_known_message(tmp_path: Path) -> None:
    # Without the lock a snapshot can list the envelopes, then a batch is renamed into place
    # and its Message-IDs logged, then the log is linked: ids known, messages missing. After
    # a restore those messages would be refused as duplicates and never delivered.
    stop = threading.Event()
    results: list[tuple[int, list[str]]] = []

    def snapshots(spool_dir: Path) -> None:
        while not stop.wait(0.005):  # paced: back to back, snapshots would starve the commits
            snapshot = take(spool_dir)
            try:
                results.append(_consistent(snapshot))
            finally:
                snapshot.discard()

    async with Spool(tmp_path) as spool:
        spool.recover()
        taker = threading.Thread(target=snapshots, args=(tmp_path,))
        taker.start()
        try:
            # At least 10 waves, and on until 5 snapshots were taken while commits ran (a
            # loaded machine may take fewer in 10 waves); bounded so a broken taker fails.
            wave = 0
            while wave < 10 or (len(results) < 5 and wave < 500):
                wave += 1
                await asyncio.gather(
                    *(
                        spool.accept(
                            Envelope(
                                "", [f"r{wave}-{i}@example.com"], message_id=f"<{wave}.{i}@t>"
                            ),
                            b"Subject: x\r\n\r\nbody\r\n",
                        )
                        for i in range(200)
                    )
                )
        finally:
            stop.set()
            await asyncio.to_thread(taker.join)
    assert len(results) >= 5, "too few snapshots overlapped the commits"
    assert any(known for known, _ in results)
    assert [missing for _, missing in results if missing] == []
    leftovers = await asyncio.to_thread(lambda: list(tmp_path.glob(".snapshot-*")))
    assert leftovers == [], "a snapshot's links were left behind"


def test_spool_directories_finds_the_root_and_each_instance(tmp_path: Path) -> None:
    (tmp_path / "env").mkdir()
    for index in (0, 1):
        (tmp_path / f"instance-{index}" / "env").mkdir(parents=True)
    (tmp_path / "instance-x").mkdir()
    assert spool_directories(tmp_path) == [
        tmp_path,
        tmp_path / "instance-0",
        tmp_path / "instance-1",
    ]


def test_a_crashed_backups_links_are_removed_a_running_ones_kept(tmp_path: Path) -> None:
    for folder in ("env", "msg"):
        (tmp_path / folder).mkdir()
    running = tmp_path / f".snapshot-{os.getpid()}-1"
    crashed = tmp_path / ".snapshot-999999999-1"  # above any pid_max: no such process
    for directory in (running, crashed):
        directory.mkdir()
    snapshot = take(tmp_path)
    snapshot.discard()
    assert running.is_dir()
    assert not crashed.exists()
