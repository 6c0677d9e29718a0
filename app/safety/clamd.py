"""A ClamAV clamd client: INSTREAM scans of bytes over TCP or a unix socket, one connection
per scan (`ClamdClient`) or many scans over a few long-lived IDSESSION connections
(`ClamdSessions`, for the inbound stream)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from dataclasses import dataclass, field

from app.core.settings import Settings
from app.safety.daemon import DaemonAddress, DaemonError, DaemonUnavailable, close_quietly

DAEMON = "clamd"
CHUNK = 64 * 1024
_END_OF_STREAM = struct.pack("!L", 0)
INSTREAM = b"zINSTREAM\0"
IDSESSION = b"zIDSESSION\0"
END = b"zEND\0"
SESSION_IDLE = 20.0
"""Seconds an idle session is kept: under clamd's default IdleTimeout (30 s), after which
clamd closes it."""


class ClamdError(DaemonError):
    """clamd answered with an error (a size limit, a broken stream) or something unreadable."""


class ClamdUnavailable(ClamdError, DaemonUnavailable):
    """clamd could not be reached or did not answer within the timeout."""


@dataclass(frozen=True)
class MalwareVerdict:
    """clean, or infected with the signature clamd names."""

    infected: bool
    signature: str | None = None


CLEAN = MalwareVerdict(infected=False)


class ClamdClient:
    """Talks to one clamd; each scan opens its own connection (null-terminated commands)."""

    def __init__(self, address: str | DaemonAddress, *, timeout: float = 30.0) -> None:
        self.address = (
            address if isinstance(address, DaemonAddress) else DaemonAddress.parse(address)
        )
        self.timeout = timeout

    async def ping(self) -> None:
        """Return when clamd answers PONG; ClamdUnavailable or ClamdError otherwise."""
        reply = await self._exchange(b"zPING\0", b"")
        if reply != "PONG":
            raise ClamdError(DAEMON, f"unexpected answer to PING: {reply!r}")

    async def scan(self, data: bytes) -> MalwareVerdict:
        """clamd's verdict on `data`, sent with INSTREAM in chunks."""
        reply = await self._exchange(INSTREAM, data)
        return parse_scan_reply(reply)

    async def _exchange(self, command: bytes, data: bytes) -> str:
        """Send a command (and for INSTREAM the data), read the null-terminated reply."""
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self.address.connect(DAEMON, ClamdUnavailable)
                try:
                    # clamd stops reading, replies and closes when a stream passes its
                    # StreamMaxLength: the reply is still worth reading.
                    with contextlib.suppress(ConnectionError):
                        await _send(writer, command, data)
                    reply = await reader.read()
                finally:
                    await close_quietly(writer)
        except TimeoutError:
            raise ClamdUnavailable(
                DAEMON, f"{self.address} gave no answer within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise ClamdUnavailable(DAEMON, f"connection to {self.address} failed: {exc}") from None
        if not reply:
            raise ClamdUnavailable(DAEMON, f"{self.address} closed the connection without a reply")
        return reply.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


async def _send(writer: asyncio.StreamWriter, command: bytes, data: bytes) -> None:
    writer.write(command)
    if command == INSTREAM:
        # writelines hands the chunks to one send where the socket takes them: a reply-sized
        # message goes out in one system call instead of three.
        for start in range(0, len(data), CHUNK):
            chunk = data[start : start + CHUNK]
            writer.writelines((struct.pack("!L", len(chunk)), chunk))
            if writer.transport.get_write_buffer_size() > CHUNK:
                await writer.drain()
        writer.write(_END_OF_STREAM)
    await writer.drain()


def parse_scan_reply(reply: str) -> MalwareVerdict:
    """`stream: OK`, `stream: <signature> FOUND`, or ClamdError for `… ERROR` and the rest."""
    _, _, result = reply.partition(": ")
    if result == "OK":
        return CLEAN
    if result.endswith(" FOUND"):
        return MalwareVerdict(infected=True, signature=result.removesuffix(" FOUND"))
    raise ClamdError(DAEMON, f"scan failed: {reply or 'empty reply'}")


@dataclass
class _Session:
    """One IDSESSION connection: commands go one at a time, replies carry their number."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent: int = 0
    idle_since: float = field(default_factory=time.monotonic)

    async def scan(self, data: bytes) -> str:
        """The reply to one INSTREAM, its `<n>: ` prefix checked and removed."""
        self.sent += 1
        # clamd stops reading when a stream passes StreamMaxLength; its reply still comes.
        with contextlib.suppress(ConnectionError):
            await _send(self.writer, INSTREAM, data)
        reply = (await self.reader.readuntil(b"\0"))[:-1].decode("utf-8", "replace").strip()
        number, _, rest = reply.partition(": ")
        if not number.isdigit():
            return reply  # an error clamd did not number; parse_scan_reply reports it
        if number != str(self.sent):
            raise ClamdError(DAEMON, f"session reply out of order: {reply!r}")
        return rest

    async def close(self, *, polite: bool) -> None:
        """End the session (zEND when clamd is still listening) and close the stream."""
        if polite and not self.writer.is_closing():
            with contextlib.suppress(OSError):
                self.writer.write(END)
        await close_quietly(self.writer)


class ClamdSessions:
    """Scans over at most `size` long-lived IDSESSION connections to one clamd.

    A connection per scan costs a connect, clamd's accept and a close on both sides for a
    few hundred bytes of reply; a session keeps the connection for the next scan. One scan
    is in flight per session, so `size` scans run at once (on clamd's threads). A session
    that clamd has closed (its IdleTimeout, a restart) fails before its reply: the scan is
    tried once more on a new session. A session that saw an error is not reused.
    """

    def __init__(self, client: ClamdClient, *, size: int = 8) -> None:
        self.client = client
        self.size = size
        self._idle: list[_Session] = []
        self._slots = asyncio.Semaphore(size)

    @property
    def address(self) -> DaemonAddress:
        """Where clamd listens."""
        return self.client.address

    async def scan(self, data: bytes) -> MalwareVerdict:
        """clamd's verdict on `data` (INSTREAM on a pooled session)."""
        async with self._slots:
            session = self._reusable()
            if session is not None:
                try:
                    return await self._scan_on(session, data)
                except _Stale:
                    pass  # clamd closed it while it was idle: a fresh one below
            try:
                return await self._scan_on(await self._open(), data)
            except _Stale:
                raise ClamdUnavailable(
                    DAEMON, f"{self.address} closed the connection without a reply"
                ) from None

    async def aclose(self) -> None:
        """End every idle session."""
        idle, self._idle = self._idle, []
        for session in idle:
            await session.close(polite=True)

    def _reusable(self) -> _Session | None:
        now = time.monotonic()
        while self._idle:
            session = self._idle.pop()
            if now - session.idle_since < SESSION_IDLE and not session.reader.at_eof():
                return session
            # Too old to trust: clamd may be closing it right now.
            session.writer.close()
        return None

    async def _open(self) -> _Session:
        try:
            async with asyncio.timeout(self.client.timeout):
                reader, writer = await self.address.connect(DAEMON, ClamdUnavailable)
                try:
                    writer.write(IDSESSION)
                    await writer.drain()
                except BaseException:
                    writer.close()
                    raise
        except TimeoutError:
            raise ClamdUnavailable(
                DAEMON, f"{self.address} gave no answer within {self.client.timeout:g} s"
            ) from None
        except OSError as exc:
            raise ClamdUnavailable(DAEMON, f"connection to {self.address} failed: {exc}") from None
        return _Session(reader, writer)

    async def _scan_on(self, session: _Session, data: bytes) -> MalwareVerdict:
        """Scan on `session`; it goes back to the pool only after a clean or infected reply."""
        try:
            async with asyncio.timeout(self.client.timeout):
                reply = await session.scan(data)
        except TimeoutError:
            await session.close(polite=False)
            raise ClamdUnavailable(
                DAEMON, f"{self.address} gave no answer within {self.client.timeout:g} s"
            ) from None
        except (asyncio.IncompleteReadError, OSError) as exc:
            await session.close(polite=False)
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise ClamdError(DAEMON, f"a broken reply: {exc.partial!r}") from None
            raise _Stale from None
        except (ClamdError, asyncio.LimitOverrunError) as exc:
            await session.close(polite=False)
            if isinstance(exc, ClamdError):
                raise
            raise ClamdError(DAEMON, "a reply longer than any scan result") from None
        except asyncio.CancelledError:
            # Stopped mid-scan (the processor stopping): its reply would answer the next scan.
            session.writer.close()
            raise
        try:
            verdict = parse_scan_reply(reply)
        except ClamdError:
            # An ERROR (a size limit, say) ends the session on clamd's side too.
            await session.close(polite=False)
            raise
        session.idle_since = time.monotonic()
        self._idle.append(session)
        return verdict


class _Stale(Exception):
    """The session's connection was gone before any reply came."""


def clamd_client(settings: Settings) -> ClamdClient | None:
    """The client WARTA_CLAMD names, or None when clamd is not configured."""
    if not settings.clamd:
        return None
    return ClamdClient(settings.clamd, timeout=settings.clamd_timeout)
