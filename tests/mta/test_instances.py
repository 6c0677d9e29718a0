"""Spools change hands when the number of MTA processes changes; no message is stranded."""

from __future__ import annotations

import os
from pathlib import Path

from workers.mta.instances import adopt, consolidate, instance_dir
from workers.mta.spool import Envelope, Spool


async def _spool_with(directory: Path, count: int, prefix: str) -> set[str]:
    async with Spool(directory) as spool:
        spool.recover()
        for index in range(count):
            envelope = Envelope(
                mail_from="a@example.com",
                recipients=[f"r{index}@example.com"],
                message_id=f"<{prefix}{index}@test.example>",
            )
            await spool.accept(envelope, f"Subject: {prefix}{index}\r\n\r\nbody\r\n".encode())
    return {path.stem for path in (directory / "msg").glob("*.eml")}


async def _queued(directory: Path) -> set[str]:
    async with Spool(directory) as spool:
        return {envelope.queue_id for envelope in spool.recover()}


async def test_growing_and_shrinking_moves_every_queued_message(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    single = await _spool_with(root, 3, "a")
    assert consolidate(root, 2) == [instance_dir(root, 0), instance_dir(root, 1)]
    assert await _queued(root) == set()
    assert await _queued(instance_dir(root, 0)) == single

    second = await _spool_with(instance_dir(root, 1), 2, "b")
    third = await _spool_with(instance_dir(root, 2), 2, "c")  # left by an earlier N = 3
    consolidate(root, 2)
    assert await _queued(instance_dir(root, 0)) == single | third  # 2 mod 2 = 0
    assert await _queued(instance_dir(root, 1)) == second

    assert consolidate(root, 1) == [root]
    assert await _queued(root) == single | second | third
    for index in range(3):
        assert await _queued(instance_dir(root, index)) == set()


async def test_an_adoption_cut_short_by_a_crash_is_finished_next_time(tmp_path: Path) -> None:
    source, target = tmp_path / "old", tmp_path / "new"
    queued = await _spool_with(source, 2, "m")
    # The crash came after the links, before the originals were unlinked.
    for folder, suffix in (("msg", ".eml"), ("env", ".json")):
        (target / folder).mkdir(parents=True)
        for queue_id in queued:
            if (source / folder / f"{queue_id}{suffix}").exists():  # env/: once changed
                os.link(
                    source / folder / f"{queue_id}{suffix}",
                    target / folder / f"{queue_id}{suffix}",
                )
    assert adopt(source, target) == 2
    assert await _queued(target) == queued
    assert await _queued(source) == set()


async def test_an_envelope_without_its_message_stays_for_its_own_recovery(tmp_path: Path) -> None:
    source, target = tmp_path / "old", tmp_path / "new"
    (queue_id,) = await _spool_with(source, 1, "x")
    # An envelope in an env/ file (layout 1's, or one changed often) that lost its message.
    async with Spool(source) as spool:
        (kept,) = spool.recover()
        spool.changed_envelope_path(kept.queue_id).write_bytes(kept.to_json())
    (source / "msg" / f"{queue_id}.eml").unlink()
    assert adopt(source, target) == 0
    assert (source / "env" / f"{queue_id}.json").exists()
