"""`--profile`: record Warta's processes with py-spy for a run and print where the time went.

Each process gets `py-spy record --format raw --nonblocking` (sampling at 100 Hz, idle
threads left out, the process never paused); SIGINT at the end makes py-spy write its
collapsed stacks. Frames are collapsed to `function (file)` (line numbers dropped), and the
top entries are printed by inclusive time (the share of samples with the frame anywhere on
the stack) and by self time (the share with the frame on top): the flame graph's widest
bars. py-spy is a dev tool, not a dependency: `make bench` installs it into the venv.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import BIN

LAUNCHER = ("typer/", "click/", "<frozen ", "asyncio/runners.py", "uvloop/", "app/cli.py", "warta")
"""Files of the frames every sample starts with (console script, CLI, event loop start-up):
left out of the inclusive ranking, where they would fill the top at ~100 %."""
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
TOP = 12


def py_spy() -> str | None:
    """The py-spy program (the venv's first), or None."""
    candidate = BIN / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def collapse(frame: str) -> str:
    """`send (aiosmtplib/smtp.py:123)` -> `send (aiosmtplib/smtp.py)`."""
    match = FRAME.match(frame.strip())
    return f"{match['function']} ({match['file']})" if match else frame.strip()


def _launcher(frame: str) -> bool:
    file = frame.rpartition(" (")[2].rstrip(")")
    return file.startswith(LAUNCHER)


@dataclass
class Profile:
    """Sample counts of one process, by collapsed frame."""

    samples: int = 0
    inclusive: Counter[str] = field(default_factory=Counter)
    self_time: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, text: str) -> Profile:
        """Read py-spy's raw (collapsed stack) output: `frame;frame;… count` per line."""
        profile = cls()
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [collapse(f) for f in stack.split(";") if not f.startswith("process ")]
            if not frames:
                continue
            n = int(count)
            profile.samples += n
            profile.self_time[frames[-1]] += n
            for frame in set(frames):
                profile.inclusive[frame] += n
        return profile

    def table(self, top: int = TOP) -> str:
        """The top entries by inclusive and by self time, as text."""
        if not self.samples:
            return "    (no samples)"
        lines = [f"    {self.samples:,} samples; by inclusive time:"]
        inclusive = [(f, n) for f, n in self.inclusive.most_common() if not _launcher(f)]
        lines += [f"      {n / self.samples:6.1%}  {frame}" for frame, n in inclusive[:top]]
        lines.append("    by self time:")
        lines += [
            f"      {n / self.samples:6.1%}  {frame}"
            for frame, n in self.self_time.most_common(top)
        ]
        return "\n".join(lines)


class Profiler:
    """py-spy recorders attached to named processes for the length of a run."""

    def __init__(self, directory: Path, enabled: bool) -> None:
        self.directory = directory
        self.program = py_spy() if enabled else None
        if enabled and self.program is None:
            print("  --profile: py-spy is not installed (`make bench` installs it); no profile")
        self.recorders: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def attach(self, name: str, pid: int, subprocesses: bool = True) -> None:
        """Start recording process `pid` (and its subprocesses, unless told not to) as `name`."""
        if self.program is None:
            return
        output = self.directory / f"profile-{name}.txt"
        args = [self.program, "record", "--format", "raw", "--nonblocking"]
        args += ["--subprocesses"] if subprocesses else []
        args += ["-p", str(pid), "-o", str(output)]
        with (self.directory / f"py-spy-{name}.log").open("ab") as log:
            self.recorders[name] = (
                subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT),
                output,
            )

    def finish(self) -> dict[str, Profile]:
        """Stop every recorder (they write their output on SIGINT) and read the profiles."""
        for recorder, _ in self.recorders.values():
            if recorder.poll() is None:
                recorder.send_signal(signal.SIGINT)
        profiles: dict[str, Profile] = {}
        for name, (recorder, output) in self.recorders.items():
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
            text = output.read_text(errors="replace") if output.exists() else ""
            profiles[name] = Profile.parse(text)
        self.recorders.clear()
        return profiles


def print_profiles(profiles: dict[str, Profile]) -> None:
    """Print each process's top entries."""
    for name, profile in profiles.items():
        print(f"  profile of {name} (py-spy, frames as `function (file)`):")
        print(profile.table())
    sys.stdout.flush()
