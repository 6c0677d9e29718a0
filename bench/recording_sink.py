"""An SMTP sink that writes down every recipient it accepts, run as its own process.

Each accepted message appends one line per recipient to the log — arrival time (epoch
seconds), recipient, Message-ID, tab-separated — and flushes it, so another process can
follow the file while the sink runs and count each recipient's messages afterwards:

    python -m bench.recording_sink PORT LOG
"""

from __future__ import annotations

import itertools
import re
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


class Recorder:
    """aiosmtpd handler: accept everything, note it in the log."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content or b""
        head = data.split(b"\r\n\r\n", 1)[0]
        found = MESSAGE_ID.search(head)
        message_id = found.group(1).decode(errors="replace") if found else "-"
        now = time.time()
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.out.write(f"{now:.6f}\t{rcpt}\t{message_id}\n")
            self.out.flush()
        return "250 2.0.0 OK"


@dataclass
class Arrivals:
    """What the sink's log says so far."""

    count: int
    per_recipient: Counter[str]
    times: list[float]
    """Epoch time of each arrival, in order."""

    @property
    def last(self) -> float:
        """Epoch time of the last arrival (0 if none)."""
        return self.times[-1] if self.times else 0.0

    def longest_pause(self, since: float, until: float | None = None) -> float:
        """The longest time without an arrival between `since` and `until` (by default the
        last arrival)."""
        later = [since, *(t for t in self.times if t > since)]
        later += [until] if until is not None else []
        return max((b - a for a, b in itertools.pairwise(later)), default=0.0)

    @classmethod
    def read(cls, log: Path) -> Arrivals:
        """Parse the log (a partly written last line is ignored)."""
        per: Counter[str] = Counter()
        times: list[float] = []
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            parts = line.split("\t")
            if len(parts) != 3:
                continue
            per[parts[1]] += 1
            times.append(float(parts[0]))
        times.sort()
        return cls(len(times), per, times)

    @property
    def doubled(self) -> int:
        """Messages beyond the first for any recipient."""
        return sum(n - 1 for n in self.per_recipient.values() if n > 1)


def serve(port: int, log: Path) -> None:
    """Run until SIGTERM or SIGINT."""
    from aiosmtpd.controller import Controller

    with log.open("a", encoding="utf-8") as out:
        controller = Controller(Recorder(out), hostname="127.0.0.1", port=port)
        controller.start()
        try:
            signal.sigwait({signal.SIGTERM, signal.SIGINT})
        finally:
            controller.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    serve(int(sys.argv[1]), Path(sys.argv[2]))
