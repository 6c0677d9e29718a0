"""`warta dev`'s child process: the MTA on the second core, supervised by the parent.

`warta dev` runs the API and the worker in its own event loop and the MTA as a child
process (`warta dev-mta`) with the same settings and environment, so that the two halves of
the hand-over (the worker's SMTP client, the MTA's server, spool and Maildir) run on two
cores instead of sharing one GIL. The child tells the parent it listens by writing one line
on its stdout (a pipe); the parent prints its banner only then. The child runs in a session
of its own, so a Ctrl-C in the terminal reaches the parent alone, which stops the child with
one SIGTERM once the worker and the API have stopped (the MTA drains last, as it did in one
process). If the parent dies, even of SIGKILL, the kernel sends the child SIGTERM. If the
child dies, the parent says so and stops: a developer sees a crash instead of a restart
loop that hides it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from app.core.processes import die_with_parent

READY = b"ready\n"
"""What a child writes on its stdout once it serves."""
START_TIMEOUT = 120.0
"""Seconds a child may take to start (a first start may build its spool or DKIM keys)."""
STOP_TIMEOUT = 60.0
"""Seconds a child may take to drain after SIGTERM before it is killed."""


class ChildFailed(Exception):
    """A child process did not start, or ended while the parent still needed it."""


def own_command() -> list[str]:
    """The command line that runs this `warta` again (the console script, or this Python)."""
    script = Path(sys.argv[0])
    if script.name == "warta" and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from app.cli import main; main()"]


def report_ready() -> None:
    """In the child: tell the parent it serves; from now on stdout goes where stderr goes."""
    sys.stdout.flush()
    os.write(1, READY)
    os.dup2(2, 1)  # the parent stops reading the pipe: nothing may block on it later


def _until_ready(pipe: IO[bytes]) -> bytes:
    """READY, or b"" if the pipe closed first; anything else printed is passed to stderr."""
    while (line := pipe.readline()) not in (READY, b""):
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
    return line


def _status(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Child:
    """A supervised child process that said it is ready."""

    def __init__(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.process = process

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    @classmethod
    async def start(cls, name: str, args: Sequence[str], env: Mapping[str, str]) -> Child:
        """Start `args` and return once it wrote READY; raise ChildFailed if it never does."""
        # Popen from the event loop's thread, the main one: PR_SET_PDEATHSIG watches the
        # thread that forks, so the child lives exactly as long as this process.
        process = subprocess.Popen(  # noqa: S603, ASYNC220 - our own command; returns at once
            list(args),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches the parent only
            preexec_fn=die_with_parent(),
        )
        child = cls(name, process)
        pipe: IO[bytes] | None = process.stdout
        assert pipe is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(_until_ready, pipe), START_TIMEOUT)
        except BaseException as exc:  # timed out, or cancelled: no half-started child stays
            await child.stop()
            pipe.close()
            if isinstance(exc, TimeoutError):
                raise ChildFailed(
                    f"the {name} did not start within {START_TIMEOUT:.0f} s"
                ) from None
            raise
        pipe.close()
        if line != READY:
            code = await asyncio.to_thread(process.wait)
            raise ChildFailed(f"the {name} did not start: it {_status(code)} (see the log above)")
        return child

    async def exited(self) -> None:
        """Raise ChildFailed when the child ends (the parent's services watch this task)."""
        code = await asyncio.to_thread(self.process.wait)  # returns once `stop` has run
        raise ChildFailed(f"its process {_status(code)} (see the log above)")

    async def stop(self) -> int:
        """SIGTERM, wait for it to drain and end (SIGKILL after STOP_TIMEOUT); its exit status."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return await asyncio.to_thread(self.process.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return await asyncio.to_thread(self.process.wait)
