"""The archive's compaction rewrite: CPU and peak memory of rewriting one day file.

A day file of N personalised 9 KB messages in frames of 100 (as campaign batches write
them); one frame in ten loses a message (an erasure), the others keep every message. The
rewrite (`app.archive.compaction._rewrite`) runs in this process; its CPU time and how much
the process's peak RSS grew are printed. No database: the index rows' moves are returned,
not written.

    python -m bench.compaction_bench [--messages 100000]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from app.archive import compaction, dayfiles
from app.archive.dayfiles import Frame

BODY = b"".join(
    b"Line %d of the newsletter, the same for every reader.\r\n" % i for i in range(160)
)


def _day_file(directory: Path, name: str, count: int) -> dict[Frame, set[tuple[int, int]]]:
    named: dict[Frame, set[tuple[int, int]]] = {}
    for first in range(0, count, 100):
        messages = [
            b"To: r%d@example.com\r\nSubject: News\r\n\r\n" % n + BODY
            for n in range(first, min(first + 100, count))
        ]
        packed = dayfiles.pack(messages)
        frames = dayfiles.append(directory, name, [p.data for p in packed])
        for frame, piece in zip(frames, packed, strict=True):
            erased = (first // 100) % 10 == 0
            named[frame] = set(piece.places[1:] if erased else piece.places)
    return named


def main(argv: list[str] | None = None) -> None:
    """Build the day file, rewrite it, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="warta-compaction-bench-"))
    try:
        name = "2026-12-01.zst"
        named = _day_file(directory, name, args.messages)
        size = (directory / name).stat().st_size
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.process_time()
        compaction._rewrite(directory, name, "2026-12-01.c1.zst", named)
        cpu = time.process_time() - started
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    content = args.messages * (len(BODY) + 40) / 1e6
    print(
        f"  {args.messages:,} messages (~{content:,.0f} MB of content, day file {size / 1e6:.1f} "
        f"MB): rewrite {cpu:.2f} s CPU, peak RSS +{(after - before) / 1024:,.0f} MB "
        f"(to {after / 1024:,.0f} MB)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
