"""The keys' step of the MTA's DKIM signatures (RSA, Ed25519), in a process of its own.

In `warta mta` one event loop accepts, spools and relays; signing the mail it relays for
others made the RSA step 40-45 % of that loop's time. Threads did not help: the loop and a
signing thread trade the GIL (measured, docs/performance.md). A helper process has its own
interpreter and core: the loop prepares each field (canonicalisation, body hash: cheap),
writes what the key must sign to the helper's stdin, and goes on with other sessions until
the signature comes back on its stdout.

Nothing depends on the helper: if it cannot start, dies, or stays silent for
`ANSWER_TIMEOUT` while signatures are owed, the signatures it owes are made in the loop, as
without it, and a new helper is started after a pause (again after each failed start). A
signature it refuses (an error in the key's step) is made in the loop too, which then
meets the error itself; the helper stays. Its keys are sent to it as PEM once per key,
through the pipe (the helper is this user's own child).

Frames, both ways: a header `!BQI` (kind, number, payload length), then the payload.
To the helper: KEY (number = key id, payload = PEM), SIGN (number = request id, payload =
the key id as `!I`, then the data), FORGET (drop every key). From it: OK or ERROR (number =
request id, payload = the signature, or the error's text).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.hazmat.primitives import serialization

from app.mail.dkim import DkimKey, PrivateKey

logger = logging.getLogger(__name__)

HEADER = struct.Struct("!BQI")
KEY_ID = struct.Struct("!I")
KEY, SIGN, FORGET, OK, ERROR = 1, 2, 3, 4, 5
ANSWER_TIMEOUT = 10.0
"""Seconds the helper may stay silent while signatures are owed before it is replaced."""
RESTART_AFTER = 5.0
"""Seconds between a helper's end (or a failed start) and the next start."""
MAX_KEYS = 1000
"""Keys the helper holds at most; past it, it forgets them all and is sent them again."""


class HelperGone(Exception):
    """The helper ended, or did not answer, before it signed."""


class HelperRefused(Exception):
    """The helper could not sign (its error's text): the loop signs, and meets it itself."""


@dataclass(eq=False)
class _Running:
    """One helper process and the keys it has been sent (by key: their ids there)."""

    process: asyncio.subprocess.Process
    keys: dict[DkimKey, int] = field(default_factory=dict)
    answered_at: float = field(default_factory=time.monotonic)
    """When it last answered (or started): how long it has been silent."""


class SigningHelper:
    """A helper process that makes DKIM signatures for this event loop, started at the
    first one; `sign` never fails for the helper's sake (it signs in the loop instead)."""

    def __init__(self) -> None:
        self._running: _Running | None = None
        self._reading: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next = 0
        self._first: asyncio.Task[None] | None = None
        self._closed = False
        self.signed_here = 0
        """Signatures made in the loop instead (no helper, or it failed them)."""

    @property
    def pid(self) -> int | None:
        """The running helper's process id (None while there is none)."""
        return self._running.process.pid if self._running is not None else None

    async def _start(self) -> bool:
        """Start the helper; False if it cannot start (signatures are made in the loop)."""
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError:
            logger.exception("DKIM signing helper: cannot start; signing in the event loop")
            return False
        self._running = running = _Running(process)
        self._reading = asyncio.create_task(self._read(running))
        return True

    async def _first_start(self) -> None:
        if not await self._start():
            self._restart_later()

    async def sign(self, key: DkimKey, data: bytes) -> bytes:
        """`key.sign_data(data)`, made by the helper when there is one."""
        if not self._closed and self._first is None:  # an MTA without keys needs none
            self._first = asyncio.create_task(self._first_start())
        if self._first is not None and not self._first.done():
            await asyncio.shield(self._first)
        running = self._running
        if running is not None:
            try:
                return await self._ask(running, key, data)
            except HelperRefused:
                pass
            except (HelperGone, TimeoutError, OSError) as exc:
                if running is self._running:  # silent, or gone: replace it
                    logger.warning(
                        "DKIM signing helper %s failed (%r); restarting", running.process.pid, exc
                    )
                    self._stop(running)
        self.signed_here += 1
        return key.sign_data(data)

    async def _ask(self, running: _Running, key: DkimKey, data: bytes) -> bytes:
        """The helper's signature; TimeoutError once it has been silent `ANSWER_TIMEOUT`
        while this waits (a helper busy with the signatures queued before this one is not
        silent: it answers them)."""
        number = await self._send(running, key, data)
        answer = self._pending[number]
        try:
            while True:
                silent = time.monotonic() - running.answered_at
                try:
                    async with asyncio.timeout(max(ANSWER_TIMEOUT - silent, 0)):
                        return await asyncio.shield(answer)
                except TimeoutError:
                    if time.monotonic() - running.answered_at >= ANSWER_TIMEOUT:
                        raise
        finally:
            self._pending.pop(number, None)

    async def _send(self, running: _Running, key: DkimKey, data: bytes) -> int:
        """Write a SIGN frame (and the key's first), registered under the number returned."""
        stdin = running.process.stdin
        assert stdin is not None
        key_id = running.keys.get(key)
        if key_id is None:
            if len(running.keys) >= MAX_KEYS:
                stdin.write(HEADER.pack(FORGET, 0, 0))
                running.keys.clear()
            key_id = running.keys[key] = len(running.keys)
            pem = _pem(key.private_key)
            stdin.write(HEADER.pack(KEY, key_id, len(pem)) + pem)
        self._next += 1
        number = self._next
        self._pending[number] = asyncio.get_running_loop().create_future()
        try:
            stdin.write(
                HEADER.pack(SIGN, number, KEY_ID.size + len(data)) + KEY_ID.pack(key_id) + data
            )
            await stdin.drain()
        except BaseException:
            self._pending.pop(number, None)
            raise
        return number

    async def _read(self, running: _Running) -> None:
        stdout = running.process.stdout
        assert stdout is not None
        try:
            while True:
                kind, number, length = HEADER.unpack(await stdout.readexactly(HEADER.size))
                payload = await stdout.readexactly(length)
                running.answered_at = time.monotonic()
                answer = self._pending.get(number)
                if answer is None or answer.done():
                    continue
                if kind == OK:
                    answer.set_result(payload)
                else:
                    answer.set_exception(HelperRefused(payload.decode("utf-8", "replace")))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if running is self._running:
                logger.warning("DKIM signing helper %s ended; restarting", running.process.pid)
                self._stop(running)

    def _stop(self, running: _Running) -> None:
        """Leave this helper (kill it if it still runs), fail what it owes, start another."""
        self._running = None
        if running.process.returncode is None:
            running.process.kill()
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(HelperGone("the helper ended"))
        self._restart_later()

    def _restart_later(self) -> None:
        if self._closed or (self._starting is not None and not self._starting.done()):
            return

        async def restart() -> None:
            while not self._closed and self._running is None:
                await asyncio.sleep(RESTART_AFTER)
                if await self._start():
                    return

        self._starting = asyncio.create_task(restart())

    async def close(self) -> None:
        """End the helper (it exits at the end of its input) and wait for it."""
        self._closed = True
        if self._starting is not None and not self._starting.done():  # a restart's pause
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        if self._first is not None:  # a start under way ends with a process to close
            await asyncio.gather(self._first, return_exceptions=True)
        running, self._running = self._running, None
        if running is None:
            return
        process = running.process
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._reading is not None:
            await asyncio.gather(self._reading, return_exceptions=True)


def wants_signing_helper(setting: str) -> bool:
    """`WARTA_MTA_SIGNING_HELPER`: on, off, or auto (when this process may use more than
    one core: on one, the helper would only add its round trips)."""
    if setting != "auto":
        return setting == "on"
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return (len(usable) if usable is not None else os.cpu_count() or 1) > 1


def _pem(private_key: PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def serve(source: BinaryIO, sink: BinaryIO) -> None:
    """The helper's loop: answer each SIGN frame of `source` on `sink`, until `source` ends."""
    keys: dict[int, DkimKey] = {}
    while True:
        header = _read_exactly(source, HEADER.size)
        if header is None:
            return
        kind, number, length = HEADER.unpack(header)
        payload = _read_exactly(source, length) if length else b""
        if payload is None:
            return
        if kind == KEY:
            loaded = serialization.load_pem_private_key(payload, password=None)
            keys[number] = DkimKey("", "", loaded)  # type: ignore[arg-type]
        elif kind == FORGET:
            keys.clear()
        elif kind == SIGN:
            (key_id,) = KEY_ID.unpack_from(payload)
            try:
                answer, signature = OK, keys[key_id].sign_data(payload[KEY_ID.size :])
            except Exception as exc:  # reported to the loop, which signs there instead
                answer, signature = ERROR, repr(exc).encode()
            sink.write(HEADER.pack(answer, number, len(signature)) + signature)
            sink.flush()


def _read_exactly(source: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = source.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


if __name__ == "__main__":
    # It ends when its input does (the MTA closed it, or died): Ctrl-C in a terminal,
    # which reaches the whole process group, is the MTA's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(sys.stdin.fileno(), "rb", buffering=0, closefd=False) as stdin:
        serve(stdin, sys.stdout.buffer)
