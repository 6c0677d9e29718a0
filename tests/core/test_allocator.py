"""The C allocator's arenas stay capped however many threads allocate."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from app.core.allocator import ARENAS

# glibc's malloc_stats() prints one "Arena N:" block per arena on stderr.
THREADS = """
import ctypes, sys, threading
from app.core import allocator
if sys.argv[1] == "capped":
    assert allocator.limit_arenas()
start = threading.Barrier(8)
held = []
def allocate():
    start.wait()  # all at once: each finds the arenas busy
    held.append([bytes(5000) for _ in range(2000)])
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", THREADS, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    return len(re.findall(r"^Arena \d+:", out.stderr, re.MULTILINE))


def test_threads_share_at_most_two_arenas() -> None:
    assert _arenas("free") > ARENAS  # the test can see the difference at all
    assert 1 <= _arenas("capped") <= ARENAS
