"""Commands run as real processes: their console read as it prints, and what outlives them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.helpers.api import eventually

ROOT = Path(__file__).resolve().parents[2]
WARTA = str(Path(sys.executable).parent / "warta")
"""The `warta` console script of this environment."""


def warta_env(**settings: str) -> dict[str, str]:
    """This environment without any WARTA_* variable, plus `settings` (names without prefix)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WARTA_")}
    env.update({f"WARTA_{name.upper()}": value for name, value in settings.items()})
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


class Console:
    """A command in the background: stdout and stderr merged, collected line by line."""

    def __init__(self, args: list[str], env: Mapping[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The command's process id."""
        return self.process.pid

    @property
    def text(self) -> str:
        """Everything printed so far."""
        return "\n".join(self.lines)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    async def wait_for(self, text: str, within: float = 60) -> int:
        """The index of the first line containing `text`, once printed (fails if it exits)."""

        async def printed() -> bool:
            if any(text in line for line in self.lines):
                return True
            assert self.process.poll() is None, f"exited before {text!r}:\n{self.text}"
            return False

        await eventually(printed, within, f"{text!r} printed")
        return next(index for index, line in enumerate(self.lines) if text in line)

    def stop(self, sig: signal.Signals = signal.SIGTERM, within: float = 60) -> int:
        """Send `sig`, wait for the exit, return the exit status."""
        self.process.send_signal(sig)
        code = self.process.wait(within)
        self._reader.join(within)
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def children_of(pid: int) -> set[int]:
    """The live processes whose parent is `pid`."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def processes_mentioning(text: str) -> dict[int, str]:
    """Live processes whose command line contains `text`, with their command lines."""
    found = {}
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdline = path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        pid = int(path.parent.name)
        if text in cmdline and pid != os.getpid() and alive(pid):
            found[pid] = cmdline
    return found
