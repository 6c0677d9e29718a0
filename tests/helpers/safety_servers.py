"""Throwaway spamd and clamd servers on loopback, each in its own temporary directory.

spamd runs with Debian's stock rules, a local configuration that turns off every
network test (no DNS blocklists, no rule updates) and no Bayes. clamd loads only the
signature database the test writes, so it starts in a second and needs no download.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.helpers.servers import ServerError, free_port

SPAMD_LOCAL_CF = """\
required_score 5.0
use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
dns_available no
"""
TEST_SIGNATURE_NAME = "Warta.Test.Marker-1"
TEST_MALWARE_MARKER = b"WARTA-TEST-MALWARE-7f3a-do-not-deliver"
"""Bytes the test clamd database flags; a file carrying them is 'infected' here only."""


def _find(program: str) -> str:
    found = shutil.which(program) or f"/usr/sbin/{program}"
    if not os.access(found, os.X_OK):
        raise ServerError(f"{program} not found; run scripts/ensure-system-deps.sh")
    return found


class _Daemon:
    """A child process serving a line protocol on 127.0.0.1, stopped and cleaned up on exit."""

    name = "daemon"

    def __init__(self, startup_timeout: float = 60.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self.tmp = Path()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """`host:port` as WARTA_SPAMD / WARTA_CLAMD take it."""
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The daemon's command line, once `port` and `tmp` are set."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Write the daemon's configuration under `tmp`."""

    def answers(self) -> bool:
        """Whether the daemon answers its PING."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the daemon and wait until it answers PING."""
        self.tmp = Path(tempfile.mkdtemp(prefix=f"warta-{self.name}-"))
        self.tmp.chmod(0o755)  # spamd's children drop to `nobody` and read the config
        atexit.register(self.stop)
        self.port = free_port()
        self.prepare()
        log = (self.tmp / "stderr.log").open("wb")
        self._process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self.answers():
                return
            time.sleep(0.05)
        output = (self.tmp / "stderr.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise ServerError(f"{self.name} did not answer PING on {self.address}:\n{output}")

    def stop(self) -> None:
        """Stop the daemon and remove its directory."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.tmp != Path():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _ask(self, request: bytes, expect: bytes) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(request)
                return expect in sock.recv(256)
        except OSError:
            return False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SpamdServer(_Daemon):
    """SpamAssassin's spamd in the foreground, one child, stock rules, no network tests."""

    name = "spamd"

    def prepare(self) -> None:
        site = self.tmp / "site"
        site.mkdir()
        # A site config path replaces /etc/spamassassin, whose .pre files load the plugins.
        for pre in Path("/etc/spamassassin").glob("*.pre"):
            shutil.copy(pre, site / pre.name)
        (site / "local.cf").write_text(SPAMD_LOCAL_CF)
        for path in (site, *site.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)

    def command(self) -> list[str]:
        user = ["--username=nobody"] if os.geteuid() == 0 else []
        return [
            _find("spamd"),
            f"--listen=127.0.0.1:{self.port}",
            f"--siteconfigpath={self.tmp / 'site'}",
            "--local",
            "--nouser-config",
            "--max-children=2",
            "--min-children=1",
            "--syslog=stderr",
            *user,
        ]

    def answers(self) -> bool:
        return self._ask(b"PING SPAMC/1.5\r\n\r\n", b"PONG")


class ClamdServer(_Daemon):
    """ClamAV's clamd in the foreground with only the test's signature database."""

    name = "clamd"

    @property
    def socket_path(self) -> str:
        """The unix socket clamd also listens on."""
        return str(self.tmp / "clamd.sock")

    def prepare(self) -> None:
        database = self.tmp / "db"
        database.mkdir()
        # An extended (.ndb) body signature: any file containing the marker, anywhere.
        (database / "warta-test.ndb").write_text(
            f"{TEST_SIGNATURE_NAME}:0:*:{TEST_MALWARE_MARKER.hex()}\n"
        )
        (self.tmp / "clamd.conf").write_text(
            f"DatabaseDirectory {database}\n"
            f"TCPSocket {self.port}\nTCPAddr 127.0.0.1\n"
            f"LocalSocket {self.socket_path}\n"
            f"Foreground yes\nLogFile {self.tmp / 'clamd.log'}\nStreamMaxLength 30M\n"
            f"PidFile {self.tmp / 'clamd.pid'}\nSelfCheck 3600\n"
        )

    def command(self) -> list[str]:
        return [_find("clamd"), "-c", str(self.tmp / "clamd.conf")]

    def answers(self) -> bool:
        return self._ask(b"zPING\0", b"PONG")
