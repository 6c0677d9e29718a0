"""Spool acceptance with fsync: 10 concurrent writers of 5 KB messages for ~3 s.

Measures what an SMTP session waits for before its 250: ``Spool.accept`` with group commit.
The spool lives under ``var/`` (the real disk, not a tmpfs) and is deleted afterwards.
Reference: Postfix accepts ~1,500 msg/s with fsync over 10 sessions on this kind of machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.results import Row
from workers.mta.spool import Envelope, Spool

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WRITERS = 10
DEFAULT_SIZE = 5_000
DEFAULT_SECONDS = 3.0


def _message(n: int, size: int) -> bytes:
    head = f"Message-ID: <bench{n}@warta.test>\r\nSubject: bench {n}\r\n\r\n".encode()
    return head + b"x" * max(0, size - len(head))


async def _run(
    directory: Path, writers: int, size: int, seconds: float, defer: bool = False
) -> tuple[int, float]:
    spool = Spool(directory)
    spool.recover()
    counter = iter(range(1 << 62))
    deadline = time.perf_counter() + seconds

    async def writer() -> int:
        done = 0
        while time.perf_counter() < deadline:
            n = next(counter)
            envelope = Envelope(
                mail_from="bench@warta.test",
                recipients=[f"r{n}@sink.test"],
                message_id=f"<bench{n}@warta.test>",
            )
            await spool.accept(envelope, _message(n, size))
            if defer:  # as the delivery agent after a failed attempt: the envelope changes
                envelope.states[envelope.recipients[0]].attempts += 1
                envelope.next_attempt_at += 60
                await spool.update(envelope)
            done += 1
        return done

    started = time.perf_counter()
    cpu = os.times()
    counts = await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - started
    await spool.close()
    after = os.times()
    stats = spool.stats
    accepted = sum(counts)
    user, system = after.user - cpu.user, after.system - cpu.system
    print(f"spool accept: {accepted / elapsed:,.0f} msg/s ({accepted} in {elapsed:.2f} s)")
    # CPU per message (this process, all threads): less sensitive to a busy disk or machine.
    print(
        f"CPU per message: {(user + system) / accepted * 1000:.3f} ms "
        f"(user {user / accepted * 1000:.3f}, system {system / accepted * 1000:.3f})"
    )
    print(
        f"group commits: {stats.commits}, mean batch {accepted / max(stats.commits, 1):.1f}, "
        f"mean fsync pass {stats.mean_fsync_seconds * 1000:.2f} ms"
    )
    return accepted, elapsed


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the spool acceptance benchmark and print accepts/s and fsync latency."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writers", type=int, default=DEFAULT_WRITERS)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--quick", action="store_true", help="the same (it is short already)")
    parser.add_argument(
        "--defer", action="store_true", help="change each envelope once after its commit"
    )
    args = parser.parse_args(argv if argv is not None else [])
    var = ROOT / "var"
    var.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spool-bench-", dir=var) as directory:
        accepted, elapsed = asyncio.run(
            _run(Path(directory), args.writers, args.size, args.seconds, args.defer)
        )
    return [
        Row(
            f"spool group commit, {args.writers} writers x {args.size:,} B",
            "—",
            f"{accepted / elapsed:,.0f} accepts/s",
        )
    ]


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
