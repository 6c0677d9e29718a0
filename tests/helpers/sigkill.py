"""A child process that reports each acknowledged write, killed with SIGKILL mid-batch."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def kill_mid_batch(
    code: str, directory: Path, mid_batch: Callable[[], bool], *, reports: int = 300
) -> dict[str, int]:
    """Run `code` (given `directory` as argv[1]; it prints `name number` once a write is
    acknowledged), wait for `reports` reports and then for `mid_batch()`, SIGKILL it; every
    acknowledgement it reported in whole, by name."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acknowledged: dict[str, int] = {}
    try:
        for line in child.stdout:
            name, number = line.split()
            acknowledged[name] = int(number)
            if len(acknowledged) >= reports:
                break
        deadline = time.monotonic() + 30
        while not mid_batch() and time.monotonic() < deadline:
            time.sleep(0.0002)
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.communicate(timeout=30)[0]
    for line in rest.splitlines(keepends=True):
        if line.endswith("\n"):  # not a last report the kill cut short
            name, number = line.split()
            acknowledged[name] = int(number)
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= reports
    return acknowledged
