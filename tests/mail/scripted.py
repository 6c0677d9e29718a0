"""A real asyncio SMTP server on 127.0.0.1 whose replies a test scripts, command by command.

For what the off-the-shelf servers will not do on cue: refuse or hang up at an exact
point of a pipelined batch, open DATA for a transaction it refused, or hold every reply
until the whole batch has arrived (which only a pipelining client survives).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

DROP = None
"""Script entry: close the connection instead of answering."""
SILENT = ""
"""Script entry: read the command, answer nothing, keep the connection open."""

DEFAULT_REPLIES = {
    "MAIL": "250 2.1.0 OK",
    "RCPT": "250 2.1.5 OK",
    "DATA": "354 go ahead",
    ".": "250 2.0.0 queued",
    "BDAT": "250 2.0.0 queued",
    "RSET": "250 2.0.0 OK",
    "NOOP": "250 2.0.0 OK",
    "QUIT": "221 2.0.0 bye",
}


@dataclass
class ScriptedServer:
    """Answers by `script` (verb → replies for its next uses; "." is the end of DATA).

    Every command line and every message payload as received (still dot-stuffed after
    DATA) is recorded. With `hold_replies`, no reply is sent until DATA, BDAT, RSET or
    QUIT has been read: a client that waits for MAIL's reply before going on times out.
    """

    extensions: list[str] = field(default_factory=lambda: ["PIPELINING"])
    script: dict[str, list[str | None]] = field(default_factory=dict)
    hold_replies: bool = False
    sessions: int = 0
    commands: list[bytes] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)

    def _take(self, verb: str) -> str | None:
        planned = self.script.get(verb)
        return planned.pop(0) if planned else DEFAULT_REPLIES.get(verb, "500 5.5.2 unknown")

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection, served until QUIT, a scripted DROP or the client leaves."""
        self.sessions += 1
        held: list[bytes] = []

        def answer(reply: str | None, *, flush: bool = False) -> bool:
            if reply is DROP:
                writer.write(b"".join(held))
                return False
            if reply:  # a surrogate-escaped character goes out as the byte it stands for
                held.append(reply.encode("utf-8", "surrogateescape") + b"\r\n")
            if flush or not self.hold_replies:
                writer.write(b"".join(held))
                held.clear()
            return True

        try:
            writer.write(b"220 scripted.test ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].decode("ascii", "replace").upper()
                if verb in ("EHLO", "HELO"):
                    lines = ["scripted.test", *self.extensions]
                    writer.write(
                        b"".join(
                            b"250%s%s\r\n" % (b" " if n == len(lines) - 1 else b"-", text.encode())
                            for n, text in enumerate(lines)
                        )
                    )
                    continue
                self.commands.append(line)
                if verb == "DATA":
                    reply = self._take("DATA")
                    if not answer(reply, flush=True):
                        break
                    if reply and reply.startswith("354"):
                        self.payloads.append(await reader.readuntil(b"\r\n.\r\n"))
                        if not answer(self._take("."), flush=True):
                            break
                elif verb == "BDAT":
                    self.payloads.append(await reader.readexactly(int(line.split()[1])))
                    if not answer(self._take("BDAT"), flush=True):
                        break
                elif not answer(self._take(verb), flush=verb in ("RSET", "QUIT")) or verb == "QUIT":
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


StartScripted = Callable[[ScriptedServer], Coroutine[Any, Any, str]]


@contextlib.asynccontextmanager
async def scripted_servers() -> AsyncIterator[StartScripted]:
    """Start scripted servers on free loopback ports (their `host:port`); stop them after."""
    servers: list[asyncio.Server] = []

    async def start(scripted: ScriptedServer) -> str:
        server = await asyncio.start_server(scripted.session, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    try:
        yield start
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
