"""Where a scanning daemon listens (`host:port` or a unix socket path) and how to reach it."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


class DaemonError(Exception):
    """A scanning daemon answered something Warta cannot use; the message says what."""

    def __init__(self, daemon: str, detail: str) -> None:
        super().__init__(f"{daemon}: {detail}")
        self.daemon = daemon
        self.detail = detail


class DaemonUnavailable(DaemonError):
    """The daemon could not be reached or did not answer in time."""


@dataclass(frozen=True)
class DaemonAddress:
    """A TCP `host:port` or, when `path` is set, a unix socket."""

    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> DaemonAddress:
        """`host:port`, `[ipv6]:port` or an absolute socket path; ValueError otherwise."""
        text = text.strip()
        if text.startswith("/"):
            return cls(path=text)
        if text.startswith("["):
            host, closed, rest = text[1:].partition("]")
            port_text = rest[1:] if closed and rest.startswith(":") else ""
        else:
            host, _, port_text = text.rpartition(":")
        if not host or not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
            raise ValueError(f"{text!r} is neither host:port nor an absolute socket path")
        return cls(host=host, port=int(port_text))

    def __str__(self) -> str:
        if self.path:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def connect(
        self, daemon: str, unavailable: type[DaemonUnavailable]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An open stream to the daemon, or `unavailable` naming the address."""
        try:
            if self.path:
                return await asyncio.open_unix_connection(self.path)
            return await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            detail = exc.strerror or str(exc)
            raise unavailable(daemon, f"cannot connect to {self}: {detail}") from None


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    """Close a daemon stream; a peer that already went away is not an error here."""
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
