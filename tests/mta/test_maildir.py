"""The capture Maildir's group commit: durable before "delivered", each message once when
nothing fails (at least once when something does)."""

from __future__ import annotations

import asyncio
import os
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.sigkill import kill_mid_batch
from workers.mta import maildir as maildir_module
from workers.mta.maildir import DurableMaildir
from workers.mta.routing import Route, RouteSource
from workers.mta.transports import CaptureTransport

MESSAGE = b"Subject: hello\r\nFrom: a@warta.test\r\n\r\nbody\r\n"


class FileOperations:
    """Records, in order, which file or directory was fsynced or renamed (then does it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            real_fsync(fd)
            self._note("fsynced", os.readlink(f"/proc/self/fd/{fd}"))

        def replace(source: Any, target: Any) -> None:
            real_replace(source, target)
            self._note("renamed", str(target))

        monkeypatch.setattr(maildir_module.os, "fsync", fsync)
        monkeypatch.setattr(maildir_module.os, "replace", replace)

    def _note(self, what: str, path: str) -> None:
        with self._lock:
            self.events.append((what, path))

    def note_answer(self, path: Path) -> None:
        """The caller was told its message is stored."""
        self._note("answered", str(path))

    def index(self, what: str, path: str, after: int = -1) -> int:
        """Position of the first `what` of `path` after position `after`."""
        for position, event in enumerate(self.events):
            if position > after and event == (what, path):
                return position
        raise AssertionError(f"no {what} of {path} after event {after}: {self.events}")


@pytest.fixture
def real_tmp(tmp_path: Path) -> Path:
    """tmp_path without symbolic links, as /proc/self/fd names the files in it."""
    return tmp_path.resolve()


async def test_no_one_is_answered_before_their_file_and_its_entry_are_fsynced(
    real_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operations = FileOperations(monkeypatch)
    maildir = DurableMaildir(real_tmp)

    async def deliver(n: int) -> None:
        for path in await maildir.store([MESSAGE + str(n).encode()]):
            operations.note_answer(path)

    await asyncio.gather(*(deliver(n) for n in range(60)))

    new = str(real_tmp / "new")
    answers = [(i, path) for i, (what, path) in enumerate(operations.events) if what == "answered"]
    assert len(answers) == 60
    for answered, path in answers:
        name = Path(path).name
        # The file's data was fsynced under tmp/, then it was renamed into new/, then new/
        # was fsynced: only then did its sender hear "stored".
        written = operations.index("fsynced", str(real_tmp / "tmp" / name))
        renamed = operations.index("renamed", path, after=written)
        directory_synced = operations.index("fsynced", new, after=renamed)
        assert directory_synced < answered
    # And the point of it all: concurrent deliveries shared their directory fsyncs.
    assert maildir.stats.stored == 60
    assert maildir.stats.commits < 60
    assert sum(1 for event in operations.events if event == ("fsynced", new)) == (
        maildir.stats.commits
    )


async def test_concurrent_capture_deliveries_each_land_exactly_once(tmp_path: Path) -> None:
    transport = CaptureTransport(tmp_path / "maildir")
    route = Route("example.com", RouteSource.MX, [])
    try:
        results = await asyncio.gather(
            *(
                transport.deliver(
                    route,
                    "bounces@warta.test",
                    [f"r{n}a@example.com", f"r{n}b@example.com"],
                    MESSAGE + f"message {n}\r\n".encode(),
                )
                for n in range(150)
            )
        )
    finally:
        await transport.aclose()

    assert all(result.delivered for answer in results for result in answer.values())
    stored = [path.read_bytes() for path in (tmp_path / "maildir" / "new").iterdir()]
    expected = sorted(
        f"Return-Path: <bounces@warta.test>\r\nDelivered-To: r{n}{copy}@example.com\r\n".encode()
        + MESSAGE
        + f"message {n}\r\n".encode()
        for n in range(150)
        for copy in "ab"
    )
    assert sorted(stored) == expected
    assert list((tmp_path / "maildir" / "tmp").iterdir()) == []
    assert transport.maildir.stats.commits < 150  # batched, not one pass per delivery


async def test_a_failed_pass_fails_its_waiters_and_the_next_pass_works(tmp_path: Path) -> None:
    maildir = DurableMaildir(tmp_path)
    (tmp_path / "new").rmdir()  # nowhere to rename into: the pass fails
    with pytest.raises(FileNotFoundError):
        await asyncio.gather(*(maildir.store([MESSAGE]) for _ in range(5)))
    (tmp_path / "new").mkdir()
    [path] = await maildir.store([MESSAGE])
    assert path.read_bytes() == MESSAGE
    await maildir.close()


def test_add_stores_one_message_at_once(tmp_path: Path) -> None:
    path = DurableMaildir(tmp_path).add(MESSAGE)
    assert path.parent == tmp_path / "new"
    assert path.read_bytes() == MESSAGE


CHILD = textwrap.dedent(
    """
    import asyncio, itertools, sys
    from pathlib import Path
    from workers.mta.maildir import DurableMaildir

    async def writer(maildir, counter):
        while True:
            n = next(counter)
            [path] = await maildir.store([b"message %d\\r\\n" % n + b"x" * 20_000])
            print(path.name, n, flush=True)

    async def main():
        maildir = DurableMaildir(Path(sys.argv[1]))
        counter = itertools.count()
        await asyncio.gather(*(writer(maildir, counter) for _ in range(16)))

    asyncio.run(main())
    """
)


def test_every_acknowledged_message_survives_a_sigkill_mid_batch(tmp_path: Path) -> None:
    # Killed while a batch is half written: files in tmp/, none of them acknowledged.
    acknowledged = kill_mid_batch(CHILD, tmp_path, lambda: any((tmp_path / "tmp").iterdir()))
    assert any((tmp_path / "tmp").iterdir()), "the kill did not land mid-batch"

    stored = {path.name: path.read_bytes() for path in (tmp_path / "new").iterdir()}
    assert set(acknowledged) <= set(stored)
    for name, n in acknowledged.items():
        assert stored[name] == b"message %d\r\n" % n + b"x" * 20_000
    # Whatever reached new/ is whole: a file is renamed there only once it is written.
    for data in stored.values():
        assert data.endswith(b"x" * 20_000)


@pytest.mark.parametrize("when", ["before its first pass", "during a pass"])
async def test_waiters_hear_of_a_stopped_committer_instead_of_waiting_forever(
    tmp_path: Path, when: str
) -> None:
    maildir = DurableMaildir(tmp_path)
    entered, release = threading.Event(), threading.Event()
    commit = maildir._commit

    def held_commit(messages: list[bytes]) -> list[Path]:
        entered.set()
        release.wait(30)
        return commit(messages)

    maildir._commit = held_commit  # type: ignore[method-assign]
    waiters = [asyncio.create_task(maildir.store([MESSAGE])) for _ in range(20)]
    await asyncio.sleep(0)  # the first store starts the committer, the others queue
    if when == "during a pass":
        assert await asyncio.to_thread(entered.wait, 30)
    committer = maildir._committer
    assert committer is not None
    committer.cancel()
    release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 30)
    stopped = [o for o in outcomes if isinstance(o, RuntimeError)]
    assert len(stopped) == 20, outcomes  # none answered "stored" by a pass that did not report
    [path] = await maildir.store([MESSAGE])  # a later store starts a new committer
    assert path.read_bytes() == MESSAGE
    await maildir.close()
