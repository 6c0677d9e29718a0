"""The spool's Message-ID index: a dict's answers, in a file rather than on the heap."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from workers.mta import message_id_index
from workers.mta.message_id_index import MOVE_PER_INSERT, MessageIdIndex
from workers.mta.spool import new_queue_id
from workers.mta.spool_format import QueueId


def test_answers_like_a_dict_and_keeps_every_id_as_the_table_grows(tmp_path: Path) -> None:
    index = MessageIdIndex(tmp_path, slots=8)
    expected = {f"m{n}@warta.test": (new_queue_id(), 1000.0 + n) for n in range(500)}
    for key, value in expected.items():
        index[key] = value
    first = next(iter(expected))
    index[first] = expected[first] = (new_queue_id(), 5000.0)  # recorded again: replaced
    index["odd@warta.test"] = expected["odd@warta.test"] = (QueueId("not-a-queue-id"), 7.5)

    assert len(index) == len(expected)
    assert all(index.get(key) == value for key, value in expected.items())
    assert index.get("unknown@warta.test") is None
    assert index.get("M0@warta.test") is None  # ids are compared exactly, as before


def test_every_answer_holds_at_every_step_of_a_growth(tmp_path: Path) -> None:
    # Ids are recorded again while the old table is still being emptied: the newer entry
    # wins, and each id counts once.
    index = MessageIdIndex(tmp_path, slots=16)
    expected: dict[str, tuple[QueueId, float]] = {}
    for n in range(400):
        key = f"m{n // 3 if n % 7 == 0 else n}@warta.test"
        index[key] = expected[key] = (new_queue_id(), float(n))
        assert len(index) == len(expected)
        assert all(index.get(k) == v for k, v in expected.items()), n


def test_no_insertion_rebuilds_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The whole table rebuilt in one insertion held the MTA's event loop for 1.1 s at
    # 262,144 slots; each insertion now moves a few slots of the old table across.
    index = MessageIdIndex(tmp_path, slots=1024)
    reads = 0
    pread = os.pread

    def counted(fd: int, length: int, offset: int) -> bytes:
        nonlocal reads
        reads += 1
        return pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", counted)
    most = 0
    for n in range(6000):  # four growths: 1,024 → 16,384 slots
        reads = 0
        index[f"m{n}@warta.test"] = (new_queue_id(), float(n))
        most = max(most, reads)
    # A few probes in each table and one per slot moved; rebuilding the 8,192-slot table
    # in one insertion took a probe per entry, ~5,700 reads.
    assert most < 8 * (2 + MOVE_PER_INSERT)
    assert all(index.get(f"m{n}@warta.test") is not None for n in range(0, 6000, 7))


def test_growing_leaves_out_what_is_older_than_the_horizon(tmp_path: Path) -> None:
    index = MessageIdIndex(tmp_path, slots=8, horizon=lambda: 100.0)
    index["old@warta.test"] = (new_queue_id(), 99.0)
    for n in range(10):
        index[f"m{n}@warta.test"] = (new_queue_id(), 100.0 + n)

    assert index.get("old@warta.test") is None
    assert len(index) == 10


def test_a_growth_that_cannot_make_its_file_leaves_the_index_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = MessageIdIndex(tmp_path, slots=8)
    expected = {f"m{n}@warta.test": (new_queue_id(), float(n)) for n in range(5)}
    for key, value in expected.items():
        index[key] = value

    def no_space(directory: Path, slots: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(message_id_index, "_temporary_file", no_space)
    expected["m5@warta.test"] = (new_queue_id(), 5.0)
    with pytest.raises(OSError):  # the id is recorded; the table could not grow
        index["m5@warta.test"] = expected["m5@warta.test"]
    assert len(index) == 6
    assert all(index.get(key) == value for key, value in expected.items())

    monkeypatch.undo()  # space again: the next insertion grows the table
    for n in range(6, 30):
        index[f"m{n}@warta.test"] = expected[f"m{n}@warta.test"] = (new_queue_id(), float(n))
    assert len(index) == len(expected)
    assert all(index.get(key) == value for key, value in expected.items())


def test_closing_during_a_growth_releases_both_files(tmp_path: Path) -> None:
    index = MessageIdIndex(tmp_path, slots=64)
    for n in range(46):  # past 70 %: the table grew, and its old half is not emptied yet
        index[f"m{n}@warta.test"] = (new_queue_id(), float(n))
    open_files = len(os.listdir("/proc/self/fd"))
    index.close()
    assert len(os.listdir("/proc/self/fd")) == open_files - 2
    assert index.get("m0@warta.test") is None


def test_the_heap_does_not_grow_with_the_number_of_ids(tmp_path: Path) -> None:
    index = MessageIdIndex(tmp_path)
    index["first@warta.test"] = (new_queue_id(), 1.0)
    tracemalloc.start()
    try:
        for n in range(50_000):
            index[f"<{n}.campaign-7@warta.example>"] = (new_queue_id(), float(n))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A dict held ~400 bytes an id: ~20 MB here.
    assert held < 100_000
    assert index.get("<49999.campaign-7@warta.example>") is not None


def test_the_file_has_no_name_and_is_released_on_close(tmp_path: Path) -> None:
    index = MessageIdIndex(tmp_path)
    index["m@warta.test"] = (new_queue_id(), 1.0)
    assert os.listdir(tmp_path) == []  # nothing a backup or a crash could leave behind
    open_files = len(os.listdir("/proc/self/fd"))
    index.close()
    assert len(os.listdir("/proc/self/fd")) == open_files - 1
    assert index.get("m@warta.test") is None
