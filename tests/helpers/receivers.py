"""Real HTTP receivers on 127.0.0.1 for webhook tests: a few lines of HTTP/1.1 over asyncio."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

HANG = -1


@dataclass(frozen=True)
class Request:
    """One request as received."""

    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers each request with `reply(n)` (n = requests so far), or hangs for HANG."""

    reply: Callable[[int], int] = lambda n: 200
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                _, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status = self.reply(len(self.requests))
                self.requests.append(Request(path, headers, body, time.monotonic()))
                if status == HANG:
                    await self._release.wait()
                    return
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n"
                    "Content-Type: text/plain\r\n\r\nok".encode()
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()


@asynccontextmanager
async def receiver(
    reply: Callable[[int], int] = lambda n: 200,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Receiver]:
    """A receiver listening on `host` (any 127.x; a free port unless given) for the block.

    With `tls` it speaks HTTPS with that server context.
    """
    handler = Receiver(reply)
    server = await asyncio.start_server(handler._handle, host, port, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    handler.url = f"{'https' if tls else 'http'}://{host}:{port}/hook"
    try:
        yield handler
    finally:
        handler._release.set()
        server.close()
        for writer in list(handler._writers):
            writer.close()
        await server.wait_closed()
