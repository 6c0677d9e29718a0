"""One `bench.mta_bench` phase with `warta mta` under a profiler: CPU per message and where it goes.

Runs acceptance (dead next hop) or relay (DKIM, to `smtp-sink`) with `smtp-source`, reads
the user and system CPU of `warta mta` from `/proc/<pid>/stat` before and after, prints
its VmHWM after start-up and at the end, and with `--perf` the top self entries of `perf record -g` (kernel and native
code: where system time goes), with `--py-spy` the top Python frames of the event-loop
thread. No Postfix run: compare against a run of the base commit instead (put
`PYTHONPATH` on a worktree of it; this venv's `warta` then imports that code).

    python -m bench.mta_profile relay [--messages 2000] [--reuse] [--perf | --py-spy]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from bench import mta_bench, postfix
from bench.processes import cpu_by_group, free_port
from bench.profiling import collapse, py_spy

TOP = 20


def _cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _hwm(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return line.split(":", 1)[1].strip()
    return "?"


def _main_thread(raw: Path) -> str:
    """Top frames of the thread that runs the event loop, from py-spy's raw output."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "Runner.run" not in stack or not count.isdigit():
            continue
        frames = {
            collapse(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))
        }
        total += int(count)
        for frame in frames:
            inclusive[frame] += int(count)
    lines = [f"  event-loop thread, {total} samples, by inclusive time:"]
    lines += [f"    {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(TOP + 14)]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Parse arguments, run the phase once, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("phase", choices=["accept", "relay"])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--reuse", action="store_true", help="smtp-source -d (reuse sessions)")
    parser.add_argument("--perf", action="store_true", help="perf record -g (needs perf)")
    parser.add_argument("--py-spy", action="store_true", help="py-spy, event-loop thread")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="warta-mta-profile-"))
    os.chmod(tmp, 0o755)  # smtp-sink runs unprivileged
    try:
        with ExitStack() as stack:
            if args.phase == "accept":
                setup = mta_bench._warta_setup(tmp / "warta", next_hop=free_port(), dkim=False)
            else:
                sink = stack.enter_context(postfix.sink(tmp))
                setup = mta_bench._warta_setup(tmp / "warta", next_hop=sink.port, dkim=True)
            proc = stack.enter_context(mta_bench._warta(setup))
            recorder = None
            output = tmp / "profile.data"
            if args.perf:
                command = ["perf", "record", "-g", "-o", str(output), "-p", str(proc.pid)]
            elif args.py_spy:
                program = py_spy() or "py-spy"
                command = [program, "record", "--format", "raw", "--nonblocking", "--threads"]
                command += ["-p", str(proc.pid), "-o", str(output)]
            if args.perf or args.py_spy:
                recorder = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                time.sleep(1)
            user, system = _cpu(proc.pid)
            tree = cpu_by_group({"mta": [proc.pid]})["mta"]  # with its signing helper
            idle_hwm = _hwm(proc.pid)  # after start-up: imports, spool recovery, listeners
            load = os.getloadavg()[0]
            started = time.perf_counter()
            mta_bench._smtp_source(
                setup.port, args.messages, mta_bench.SESSIONS, tmp / "source.log", args.reuse
            )
            if args.phase == "relay":
                mta_bench._wait_empty(lambda: setup.spooled, "Warta")
            elapsed = time.perf_counter() - started
            user_after, system_after = _cpu(proc.pid)
            tree = cpu_by_group({"mta": [proc.pid]})["mta"] - tree
            per = 1000 / args.messages
            print(
                f"{args.phase} (reuse={args.reuse}), {args.messages:,} messages: "
                f"{args.messages / elapsed:,.0f} msg/s; warta mta CPU per message "
                f"user {(user_after - user) * per:.2f} ms + system "
                f"{(system_after - system) * per:.2f} ms (with its helper processes "
                f"{tree * per:.2f} ms); VmHWM {idle_hwm} after start-up, "
                f"{_hwm(proc.pid)} at the end; "
                f"load {load:.1f} -> {os.getloadavg()[0]:.1f}"
            )
            if recorder is not None:
                recorder.send_signal(signal.SIGINT)
                recorder.wait(timeout=120)
        if args.perf:
            options = ["--no-children", "--stdio", "-g", "none", "--sort", "dso,sym"]
            report = subprocess.run(
                ["perf", "report", "-i", str(output), *options],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            entries = [line for line in report.splitlines() if "%" in line and line[:1] != "#"]
            print("\n".join(entries[:TOP]))
        elif args.py_spy and output.exists():
            print(_main_thread(output))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
