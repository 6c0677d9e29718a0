"""The daemons the content-safety and inbound tests talk to, on loopback: spamd and clamd
(session fixtures, started once a run), a DNS server answering from zone-file text, a
daemon that never answers, and a relay that counts and cuts connections.

spamd runs with Debian's stock rules, a local configuration that turns off every
network test (no DNS blocklists, no rule updates) and no Bayes. clamd loads only the
signature database the test writes, so it starts in a second and needs no download.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

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
    def pid(self) -> int:
        """The daemon's process id (0 when it is not running)."""
        return self._process.pid if self._process is not None else 0

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


@pytest.fixture(scope="session")
def spamd_server() -> Iterator[SpamdServer]:
    """SpamAssassin's spamd on 127.0.0.1 (stock rules, no network tests), once a run."""
    with SpamdServer() as server:
        yield server


@pytest.fixture(scope="session")
def clamd_server() -> Iterator[ClamdServer]:
    """ClamAV's clamd on 127.0.0.1 (and a unix socket) with the test signature only, once a run."""
    with ClamdServer() as server:
        yield server


@pytest.fixture
async def silent_daemon() -> AsyncIterator[str]:
    """`host:port` of a server that accepts connections and never answers (a hung daemon)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


class DaemonRelay:
    """A TCP relay in front of a daemon: counts the connections made through it, says when
    one arrives, and can cut them all (as a daemon's idle timeout or restart does)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.connections = 0
        self.connected = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        """`host:port` to give the client instead of the daemon's."""
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self.cut()
        await self._server.wait_closed()

    async def cut(self) -> None:
        """Close every relayed connection, both sides."""
        relays = list(self._relays)
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*relays, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        self.connections += 1
        self.connected.set()
        ends = [writer]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            ends.append(upstream_writer)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            # Cancelled by `cut()` or done: both sides closed here, never left to the GC.
            self._relays.discard(task)
            for end in ends:
                end.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await end.wait_closed()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until end of file, then pass the half-close on (spamc's request ends so)."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except OSError:
        sink.close()


POLL_INTERVAL = 0.02


@dataclass
class ZoneResolver(BaseResolver):
    """Answers from records in zone-file syntax; a name without records is NXDOMAIN."""

    records: list[RR] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = request.q.qname
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries.append(f"{str(name).rstrip('.').lower()} {qtype}")
            found = [rr for rr in self.records if rr.rname == name]
        for rr in found:
            if QTYPE[rr.rtype] == qtype:
                reply.add_answer(rr)
        if not found:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@dataclass(frozen=True)
class ZoneDns:
    """The server's port and its records."""

    port: int
    resolver: ZoneResolver

    @property
    def servers(self) -> str:
        """The value for WARTA_*_DNS_SERVERS: `127.0.0.1:port`."""
        return f"127.0.0.1:{self.port}"

    def add(self, zone: str) -> None:
        """Serve these records too (zone-file lines with absolute names)."""
        with self.resolver.lock:
            self.resolver.records.extend(RR.fromZone(zone))

    def asked(self, name: str) -> int:
        """Queries received for `name` (any type)."""
        with self.resolver.lock:
            return sum(1 for q in self.resolver.queries if q.split()[0] == name.lower())


@contextmanager
def zone_dns(zone: str = "") -> Iterator[ZoneDns]:
    """A UDP DNS server on 127.0.0.1 (a free port) serving `zone` (RFC 1035 text, more
    with `add`) for the block."""
    resolver = ZoneResolver()
    logger = DNSLogger("-request,-reply,-truncated,-error", prefix=False, logf=lambda _: None)
    server = DNSServer(resolver, address="127.0.0.1", port=0, logger=logger)
    thread = threading.Thread(
        target=server.server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}
    )
    thread.start()
    dns = ZoneDns(server.server.server_address[1], resolver)
    try:
        if zone.strip():
            dns.add(zone)
        yield dns
    finally:
        server.stop()
        server.server.server_close()  # dnslib's stop() leaves the socket open
        thread.join(timeout=5)
