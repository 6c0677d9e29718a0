"""Warta's MTA against Postfix on the same machine, in the same run.

Two figures, each measured for `warta mta` (a subprocess with its own spool, SQLite
database and settings) and for a private Postfix instance (its own config and queue
directory under a temp dir, smtpd on a free loopback port), with the same client:
Postfix's `smtp-source` (C), 10 parallel sessions of 5 KB messages.

1. Acceptance with fsync: the next hop for example.com is a port where nothing listens,
   so every message stays queued and only acceptance (receive, fsync, 250) is timed;
   the figure is messages / wall time of the `smtp-source` run.
2. Relay to `smtp-sink`: the next hop is `smtp-sink`; Warta DKIM-signs (RSA 2048) for
   the From domain, Postfix relays the same messages unsigned. The figure is messages /
   (first submission .. the queue is empty again, i.e. the sink accepted the last one).

Acceptance is measured twice: a new connection per message (smtp-source's default) and
with `-d` (each session reuses its connection, as the campaign sender does). Both servers
keep their defaults otherwise (Postfix: default process and destination concurrency
limits; Warta: settings defaults). Every run checks its count: all messages spooled or
queued for acceptance, all accepted by the sink (its `-c` counter) for relay. Postfix is
skipped with a message when it is not installed or not root; Warta is then measured alone.

What limits Warta (first runs, 2 cores: 0.3-0.5x Postfix on every figure): `warta mta`
is CPU-bound on one core, its CPU time (printed below the table) equals the wall time,
about 5 ms of CPU per accepted message, while Postfix spreads smtpd, cleanup, qmgr and
smtp over many C processes on both cores. The SMTP dialogue, the spool and the delivery
agent share one Python event loop, so per-message interpreter overhead (parsing the
dialogue, building the envelope JSON, Message-ID dedupe, scheduling and running the
delivery task, which in the acceptance figure also tries the dead next hop and rewrites
the envelope) is all paid there. Each message costs one file in the spool (the envelope on
its first line), as Postfix writes one queue file, and a file creation unless a delivered
message's file is free to be written over; in the relay figure every delivery also
DKIM-signs (RSA via `cryptography`, canonicalisation and header handling in Python). With a new connection per message,
connection setup in asyncio weighs more than in Postfix's pre-forked smtpd processes.
The Postfix figures vary by up to 2x between runs on a shared machine; compare within one
run. Below the table, the CPU per message of each server (all its processes, from /proc).

    python -m bench.mta_bench [--messages 4000] [--relay-messages 4000] [--sessions 10]
        [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import postfix
from bench.postfix import count_files
from bench.processes import ROOT, cpu_by_group, free_port, process, tail, wait_port, warta
from bench.results import Row

SENDER = "a@example.com"
RECIPIENT = "b@example.com"
DOMAIN = postfix.DOMAIN
SIZE = 5120
SESSIONS = 10
TARGET_RATIO = 1.0
QUICK_MESSAGES = 1000


def _smtp_source(port: int, messages: int, sessions: int, log: Path, reuse: bool = False) -> float:
    return postfix.smtp_source(
        port, messages, sessions, log, size=SIZE, sender=SENDER, recipient=RECIPIENT, reuse=reuse
    )


def _wait_empty(count: Callable[[], int], what: str, timeout: float = 600) -> None:
    """Wait until the queue reads empty twice in a row.

    Twice, because a file that moves between queue directories while they are walked (Postfix's
    incoming → active) can be missed by one walk, as it can be counted twice by another.
    """
    deadline = time.monotonic() + timeout
    empty = 0
    while empty < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {count()} messages still queued after {timeout:.0f} s")
        empty = empty + 1 if count() == 0 else 0
        time.sleep(0.02)


def _settled_count(count: Callable[[], int], expected: int, timeout: float = 5) -> int:
    """The count, read again (for up to `timeout` s) while it differs from `expected`."""
    deadline = time.monotonic() + timeout
    while (found := count()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


# --- Warta -------------------------------------------------------------------------------


@dataclass
class Warta:
    """Everything one `warta mta` run needs: its env and where its spool is."""

    tmp: Path
    env: dict[str, str]
    port: int

    @property
    def spooled(self) -> int:
        spool = self.tmp / "spool"
        return count_files(spool / "msg") + sum(
            count_files(d / "msg") for d in spool.glob("instance-*")
        )


def _warta_setup(tmp: Path, next_hop: int, dkim: bool) -> Warta:
    tmp.mkdir(parents=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARTA_")}
    env.update(
        WARTA_DATABASE_URL=f"sqlite+aiosqlite:///{tmp / 'warta.db'}",
        WARTA_SECRET_KEY="bench-secret-" + "k" * 40,
        WARTA_VAR_DIR=str(tmp / "var"),
        WARTA_DKIM_DIR=str(tmp / "dkim"),
        WARTA_MTA_SPOOL_DIR=str(tmp / "spool"),
        WARTA_MTA_SUBMISSION=f"127.0.0.1:{port}",
        WARTA_MTA_INBOUND=f"127.0.0.1:{free_port()}",
        WARTA_MTA_DELIVERY="mx",
        WARTA_MTA_TRANSPORT_MAP=json.dumps({DOMAIN: f"127.0.0.1:{next_hop}"}),
        WARTA_MTA_HOSTNAME="warta.bench.test",
        WARTA_MTA_PROCESSES=os.environ.get("BENCH_MTA_PROCESSES", "1"),
    )
    (tmp / "dkim").mkdir()
    if dkim:
        sys.path.insert(0, str(ROOT))
        from app.mail.dkim import generate_key

        generate_key(tmp / "dkim", DOMAIN, "bench")
    subprocess.run(
        warta("migrate"),
        env=env,
        cwd=tmp,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Warta(tmp, env, port)


@contextmanager
def _warta(setup: Warta) -> Iterator[subprocess.Popen[bytes]]:
    log = setup.tmp / "mta.log"
    with process(warta("mta"), log, env=setup.env, cwd=setup.tmp) as proc:
        wait_port(setup.port, proc, log, 60)
        yield proc
        if proc.poll() is not None:
            raise RuntimeError(f"warta mta died:\n{tail(log)}")


# --- the figures -------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured rate, and the CPU time of the server's processes over the run."""

    rate: float
    elapsed: float
    cpu: float


def _cpu(pid: int) -> float:
    return cpu_by_group({"server": [pid]})["server"]


def _accept_warta(tmp: Path, messages: int, sessions: int, reuse: bool) -> Figure:
    setup = _warta_setup(tmp, next_hop=free_port(), dkim=False)
    with _warta(setup) as proc:
        cpu = _cpu(proc.pid)
        elapsed = _smtp_source(setup.port, messages, sessions, tmp / "source.log", reuse)
        cpu = _cpu(proc.pid) - cpu
        spooled = setup.spooled
    if spooled != messages:
        raise RuntimeError(f"Warta spooled {spooled} of {messages} messages")
    return Figure(messages / elapsed, elapsed, cpu)


def _accept_postfix(tmp: Path, messages: int, sessions: int, reuse: bool) -> Figure:
    with postfix.instance(tmp, next_hop=free_port()) as pf:
        cpu = _cpu(pf.master_pid)
        elapsed = _smtp_source(pf.port, messages, sessions, tmp / "source.log", reuse)
        cpu = _cpu(pf.master_pid) - cpu
        # smtpd answers 250 only after cleanup fsynced the queue file, so all are queued;
        # qmgr moves them between queue directories meanwhile, so a walk may miscount.
        queued = _settled_count(lambda: pf.queued, messages)
    if queued != messages:
        raise RuntimeError(f"Postfix queued {queued} of {messages} messages")
    return Figure(messages / elapsed, elapsed, cpu)


def _relay_warta(tmp: Path, sink: int, messages: int, sessions: int) -> Figure:
    setup = _warta_setup(tmp, next_hop=sink, dkim=True)
    with _warta(setup) as proc:
        cpu = _cpu(proc.pid)
        started = time.perf_counter()
        _smtp_source(setup.port, messages, sessions, tmp / "source.log")
        _wait_empty(lambda: setup.spooled, "Warta")
        elapsed = time.perf_counter() - started
        cpu = _cpu(proc.pid) - cpu
    return Figure(messages / elapsed, elapsed, cpu)


def _relay_postfix(tmp: Path, sink: int, messages: int, sessions: int) -> Figure:
    with postfix.instance(tmp, next_hop=sink) as pf:
        cpu = _cpu(pf.master_pid)
        started = time.perf_counter()
        _smtp_source(pf.port, messages, sessions, tmp / "source.log")
        _wait_empty(lambda: pf.queued, "Postfix")
        elapsed = time.perf_counter() - started
        cpu = _cpu(pf.master_pid) - cpu
    return Figure(messages / elapsed, elapsed, cpu)


def _line(figure: str, warta: Figure, peer: Figure | None) -> str:
    w = f"{warta.rate:,.0f}"
    if peer is None:
        return f"  {figure:<40} {w:>8} {'skipped':>8} {'-':>7}  -"
    ratio = warta.rate / peer.rate
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    return f"  {figure:<40} {w:>8} {peer.rate:>8,.0f} {ratio:>6.2f}x  {verdict}"


def _row(key: str, figure: str, count: int, warta: Figure, peer: Figure | None) -> Row:
    target = f"≥ {TARGET_RATIO:.1f}x Postfix"
    if peer is None:
        return Row(figure, target, f"{warta.rate:,.0f} msg/s", "Postfix skipped", None, key)
    ratio = warta.rate / peer.rate
    return Row(
        f"{figure}, {count:,} x {SIZE:,} B",
        target,
        f"{warta.rate:,.0f} msg/s = {ratio:.2f}x Postfix",
        f"Postfix {peer.rate:,.0f} msg/s",
        ratio >= TARGET_RATIO,
        key,
    )


def _run(tmp: Path, messages: int, relay_messages: int, sessions: int) -> list[Row]:
    if postfix.tool("smtp-source") is None or postfix.tool("smtp-sink") is None:
        raise RuntimeError(
            "smtp-source and smtp-sink (Postfix) are needed as client and sink: "
            "`make bench` installs postfix"
        )
    skip = postfix.unavailable()
    if skip:
        print(f"  Postfix {skip}: measuring Warta alone, no comparison", flush=True)
    results: dict[str, tuple[Figure, Figure | None]] = {}
    rows: list[Row] = []
    load = os.getloadavg()[0]  # the figures swing with it on a shared machine: print it

    for reuse in (False, True):
        label = f"acceptance+fsync, {sessions} sess, " + ("reused conn" if reuse else "conn/msg")
        print(f"  {label}: {messages:,} x {SIZE} B …", flush=True)
        warta_fig = _accept_warta(tmp / f"accept-warta-{reuse}", messages, sessions, reuse)
        peer = None
        if not skip:
            peer = _accept_postfix(tmp / f"accept-postfix-{reuse}", messages, sessions, reuse)
        results[label] = (warta_fig, peer)
        figure = f"MTA acceptance with fsync, {sessions} sessions, " + (
            "connections reused" if reuse else "new connection per message"
        )
        rows.append(_row("acceptance", figure, messages, warta_fig, peer))

    label = f"relay to smtp-sink, {sessions} sess (DKIM)"
    print(f"  {label}: {relay_messages:,} x {SIZE} B …", flush=True)
    with postfix.sink(tmp) as sink:
        before = sink.accepted
        warta_fig = _relay_warta(tmp / "relay-warta", sink.port, relay_messages, sessions)
        sink.wait_for(before, relay_messages, "Warta")
        peer = None
        if not skip:
            before = sink.accepted
            peer = _relay_postfix(tmp / "relay-postfix", sink.port, relay_messages, sessions)
            sink.wait_for(before, relay_messages, "Postfix")
    results[label] = (warta_fig, peer)
    figure = f"MTA relay to smtp-sink with DKIM (Postfix unsigned), {sessions} sessions"
    rows.append(_row("relay", figure, relay_messages, warta_fig, peer))

    print(f"\n  {'figure (msg/s)':<40} {'Warta':>8} {'Postfix':>8} {'ratio':>7}  target ≥ 1.0x")
    for figure, (w, p) in results.items():
        print(_line(figure, w, p))
    print("\n  CPU per message (all processes of the server, from /proc):")
    for figure, (w, p) in results.items():
        count = relay_messages if "relay" in figure else messages
        peer_cpu = f", Postfix {p.cpu / count * 1000:.2f} ms" if p else ""
        print(
            f"    {figure:<40} warta mta {w.cpu / count * 1000:.2f} ms "
            f"({w.cpu / w.elapsed:4.0%} of one core){peer_cpu}"
        )
    print(f"\n  load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    """Parse arguments and run both comparisons once."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=4000, help="acceptance messages")
    parser.add_argument("--relay-messages", type=int, default=4000, help="relay messages")
    parser.add_argument("--sessions", type=int, default=SESSIONS)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES:,} messages each")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv if argv is not None else [])
    if args.quick:
        args.messages = args.relay_messages = QUICK_MESSAGES
    tmp = Path(tempfile.mkdtemp(prefix="warta-mta-bench-"))
    os.chmod(tmp, 0o755)  # smtp-sink and postfix daemons run unprivileged
    try:
        return _run(tmp, args.messages, args.relay_messages, args.sessions)
    finally:
        if args.keep:
            print(f"  logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
