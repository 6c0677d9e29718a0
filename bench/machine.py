"""What machine a benchmark ran on, in figures that compare across machines.

The same tree measured 983 msg/s on one 2-core machine and a third of that on another whose
every process (PostgreSQL too) took about three times the CPU per message: the load average
cannot tell such machines apart. So each run starts with the CPU's name and two reference
timings, one of the interpreter and one of the disk, printed beside the load; the interpreter's
is taken again at the end. On a shared virtual machine the same timing also moves by half
within minutes (17.8 to 32.0 ms, best of five, on an idle machine): a run whose two timings
differ that much measured a changing machine.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import timeit
from pathlib import Path

FSYNC_FILES = 50
"""New files written and fsynced one after another for the disk's reference timing."""
INTERPRETER_LOOP = "sum(range(1_000_000))"
"""The interpreter's reference: one C loop over a million small ints, no I/O, no allocation
to speak of."""


def cores() -> int:
    """The cores this process may run on (its affinity, as `taskset` or a cgroup's cpuset
    set it), which is what the benchmarks' processes share; `os.cpu_count()` counts the
    machine's. (A cgroup's CPU quota does not show here.)"""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # not Linux


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo ("unknown CPU" elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown CPU"


def interpreter_ms() -> float:
    """Milliseconds for `INTERPRETER_LOOP`: the fastest of five rounds of five runs each."""
    return min(timeit.repeat(INTERPRETER_LOOP, number=5, repeat=5)) / 5 * 1000


def fsync_ms(directory: Path | None = None) -> float:
    """Median milliseconds to create a 4 KB file and fsync it, in `directory` (a temp dir)."""
    data = os.urandom(4096)
    timings = []
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        for index in range(FSYNC_FILES):
            started = time.perf_counter()
            fd = os.open(Path(scratch) / str(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def describe() -> str:
    """One line: the CPU and the two reference timings (the load line gives the cores)."""
    return (
        f"{cpu_model()}; {INTERPRETER_LOOP} {interpreter_ms():.1f} ms, "
        f"4 KB create+fsync {fsync_ms():.2f} ms"
    )


def interpreter_at_end() -> str:
    """The interpreter's reference timing again, for the end of a run."""
    return f"at the end, {INTERPRETER_LOOP} {interpreter_ms():.1f} ms"
