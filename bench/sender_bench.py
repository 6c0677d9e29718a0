"""SMTP sender throughput: `send_one` over pooled connections to an aiosmtpd sink.

The sink runs in a child process by default, so client and server do not share one GIL
(`--sink thread` runs it in this process, as the tests do). Reference points measured on
this kind of machine: aiosmtplib reaches ~3,500 msg/s over 10 persistent connections to
a C sink; aiosmtpd itself receives ~2,000-2,600 msg/s, so with its sink that is the cap.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import time
from multiprocessing.synchronize import Event
from typing import Any

from aiosmtpd.controller import Controller

from app.mail.sender import SmtpSender
from bench.results import Row

DEFAULT_MESSAGES = 10_000
DEFAULT_CONNECTIONS = 10
DEFAULT_SIZE = 2_048
WARM_UP = 200
SINK_START_TIMEOUT = 30.0
SINK_REPLY = "250 2.0.0 OK"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Sink:
    """Accepts and drops every message."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return SINK_REPLY


def _serve_sink(port: int, ready: Event, stop: Event) -> None:
    controller = Controller(_Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


def _message(size: int) -> bytes:
    head = (
        b"From: News <news@example.org>\r\nTo: reader@example.com\r\n"
        b"Subject: Benchmark\r\nMessage-ID: <bench@warta.test>\r\n\r\n"
    )
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def _measure(port: int, messages: int, connections: int, message: bytes) -> tuple[float, int]:
    """Seconds to send `messages` after a warm-up, and how many were delivered."""
    async with SmtpSender(
        f"127.0.0.1:{port}", pool_size=connections, local_hostname="bench.warta.test"
    ) as sender:
        remaining = iter(range(messages))
        delivered = 0

        async def worker() -> None:
            nonlocal delivered
            for index in remaining:
                result = await sender.send_one(
                    "bounces@bench.warta.test", f"r{index}@example.com", message
                )
                delivered += result.delivered

        warm = iter(range(WARM_UP))
        await asyncio.gather(
            *(sender.send_one("w@bench.warta.test", f"w{i}@example.com", message) for i in warm)
        )
        started = time.perf_counter()
        # More senders than connections, so a connection never waits for its next message.
        await asyncio.gather(*(worker() for _ in range(connections * 2)))
        return time.perf_counter() - started, delivered


def measure(messages: int, connections: int, size: int, sink: str) -> dict[str, float]:
    """Run the benchmark against a fresh sink; msg/s and what was delivered."""
    port = _free_port()
    message = _message(size)
    if sink == "thread":
        controller = Controller(_Sink(), hostname="127.0.0.1", port=port)
        controller.start()
        try:
            elapsed, delivered = asyncio.run(_measure(port, messages, connections, message))
        finally:
            controller.stop()
    else:
        context = multiprocessing.get_context("spawn")
        ready, stop = context.Event(), context.Event()
        child = context.Process(target=_serve_sink, args=(port, ready, stop), daemon=True)
        child.start()
        try:
            if not ready.wait(SINK_START_TIMEOUT):
                raise RuntimeError("the aiosmtpd sink did not start")
            elapsed, delivered = asyncio.run(_measure(port, messages, connections, message))
        finally:
            stop.set()
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
    return {
        "rate": messages / elapsed,
        "elapsed": elapsed,
        "delivered": delivered,
        "bytes": len(message),
    }


def main(argv: list[str] | None = None) -> list[Row]:
    """Print msg/s of `send_one` over pooled connections to an aiosmtpd sink."""
    parser = argparse.ArgumentParser(description="SMTP sender throughput against aiosmtpd.")
    parser.add_argument("--messages", type=int, help=f"default {DEFAULT_MESSAGES:,}")
    parser.add_argument("--quick", action="store_true", help="2,000 messages")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="message bytes")
    parser.add_argument("--sink", choices=("process", "thread"), default="process")
    args = parser.parse_args(argv if argv is not None else [])
    args.messages = args.messages or (2000 if args.quick else DEFAULT_MESSAGES)
    figures = measure(args.messages, args.connections, args.size, args.sink)
    print(
        f"sender: {args.messages} messages of {figures['bytes']:.0f} B over "
        f"{args.connections} connections to an aiosmtpd sink ({args.sink})"
    )
    print(
        f"send_one             {figures['rate']:>9,.0f} msg/s  "
        f"({figures['elapsed']:.2f} s, {figures['delivered']:.0f} delivered)"
    )
    return [
        Row(
            f"SMTP sender `send_one`, {args.connections} pooled connections → aiosmtpd sink",
            "—",
            f"{figures['rate']:,.0f} msg/s",
        )
    ]


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
