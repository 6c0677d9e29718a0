"""The processes of a benchmark run: start, wait for, stop, and account them from /proc.

CPU time is read from `/proc/<pid>/stat`: a process tree's CPU is the sum, over its live
processes, of utime + stime + cutime + cstime. A child that exited and was reaped has its
time in its parent's cutime/cstime, so the sum counts every process of the tree once, even
the short-lived ones (Postfix's smtpd processes, PostgreSQL backends), as long as the
tree's root lives from the first sample to the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def warta(*args: str) -> list[str]:
    """The command line of the venv's `warta` console script."""
    return [str(BIN / "warta"), *args]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, log: Path, timeout: float) -> None:
    """Block until something listens on 127.0.0.1:`port`; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s:\n{tail(log)}")


async def listening(
    port: int, proc: subprocess.Popen[bytes] | None, log: Path, timeout: float = 60
) -> None:
    """`wait_port` for a coroutine."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}):\n{tail(log)}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}:\n{tail(log)}") from None
            await asyncio.sleep(0.1)
        else:
            writer.close()
            await writer.wait_closed()
            return


async def logged(text: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    """Wait until `proc` has written `text` to its log (e.g. "worker ready")."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}):\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {log} after {timeout:.0f} s:\n{tail(log)}")
        await asyncio.sleep(0.1)


def start(args: list[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    """Start a process with its stdout and stderr appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload, no-any-return]


def stop(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; a no-op for a process already gone."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def process(args: list[str], log: Path, **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """A process that is stopped when the block ends, however it ends."""
    proc = start(args, log, **kwargs)
    try:
        yield proc
    finally:
        stop(proc)


# --- /proc accounting --------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, the state, is [0])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _snapshot() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, utime + stime + cutime + cstime in seconds) for every process."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
        table[int(entry.name)] = (int(fields[1]), ticks / CLOCK_TICKS)
    return table


def parent_pid(pid: int) -> int | None:
    """The parent of `pid`, or None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, …)."""
    return sorted(_tree(_snapshot(), [pid], set()) - {pid})


def _tree(table: Mapping[int, tuple[int, float]], roots: Sequence[int], stop: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(child for child in children.get(pid, []) if child not in stop)
    return found


def cpu_by_group(groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """CPU seconds so far of each named group of process trees.

    A tree stops where another group's root begins, so a process is counted in one group
    only (an MTA supervisor's children are the MTA's; a redis-server that a worker started
    is not the worker's if Redis is a group of its own).
    """
    table = _snapshot()
    roots = {pid for pids in groups.values() for pid in pids}
    result: dict[str, float] = {}
    for name, pids in groups.items():
        members = _tree(table, pids, roots - set(pids))
        result[name] = sum(table[pid][1] for pid in members)
    return result


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process in MB, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_vm_hwm_mb(pid: int) -> float:
    """The largest VmHWM among `pid` and its descendants (one MTA or its per-core children)."""
    return max((vm_hwm_mb(p) for p in [pid, *descendants(pid)]), default=0.0)
