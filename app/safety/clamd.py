"""A ClamAV clamd client: INSTREAM scans of bytes over TCP or a unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass

from app.core.settings import Settings
from app.safety.daemon import DaemonAddress, DaemonError, DaemonUnavailable, close_quietly

DAEMON = "clamd"
CHUNK = 64 * 1024
_END_OF_STREAM = struct.pack("!L", 0)
INSTREAM = b"zINSTREAM\0"


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
        for start in range(0, len(data), CHUNK):
            chunk = data[start : start + CHUNK]
            writer.write(struct.pack("!L", len(chunk)) + chunk)
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


def clamd_client(settings: Settings) -> ClamdClient | None:
    """The client WARTA_CLAMD names, or None when clamd is not configured."""
    if not settings.clamd:
        return None
    return ClamdClient(settings.clamd, timeout=settings.clamd_timeout)
