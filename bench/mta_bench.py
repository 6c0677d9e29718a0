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
the envelope) is all paid there. Each message costs two file creations, two renames and
fsyncs in the spool (message + envelope) where Postfix writes one queue file; in the relay
figure every delivery also rewrites the envelope and DKIM-signs (RSA via `cryptography`,
canonicalisation and header handling in Python). With a new connection per message,
connection setup in asyncio weighs more than in Postfix's pre-forked smtpd processes.
The Postfix figures vary by up to 2x between runs on a shared machine; compare within one
run.

    python -m bench.mta_bench [--messages 4000] [--relay-messages 4000] [--sessions 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SENDER = "a@example.com"
RECIPIENT = "b@example.com"
DOMAIN = "example.com"
SIZE = 5120
SESSIONS = 10
TARGET_RATIO = 1.0
SBIN = Path("/usr/sbin")
QUEUE_SUBDIRS = ("maildrop", "incoming", "active", "deferred", "hold")


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidate = SBIN / name
    return str(candidate) if os.access(candidate, os.X_OK) else None


def _free_port() -> int:
    sys.path.insert(0, str(ROOT))
    from tests.helpers.servers import free_port

    return free_port()


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def _process(args: list[str], log: Path, **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        _stop(proc)


def _smtp_source(port: int, messages: int, sessions: int, log: Path, reuse: bool = False) -> float:
    """Send `messages` through `sessions` parallel sessions; return the wall time.

    By default smtp-source opens a new connection per message; `reuse` (-d) keeps each
    session's connection for the next message, as the campaign sender does.
    """
    tool = _tool("smtp-source")
    assert tool is not None
    args = [tool, "-s", str(sessions), "-m", str(messages), "-l", str(SIZE), "-c"]
    args += ["-d"] if reuse else []
    args += ["-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"]
    started = time.perf_counter()
    with log.open("ab") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source exited {done.returncode}:\n{_tail(log)}")
    return elapsed


def _wait_empty(count: Callable[[], int], what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while count() > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {count()} messages still queued after {timeout:.0f} s")
        time.sleep(0.02)


def _files(directory: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


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
        return _files(spool / "msg") + sum(_files(d / "msg") for d in spool.glob("instance-*"))


def _warta_setup(tmp: Path, next_hop: int, dkim: bool) -> Warta:
    tmp.mkdir(parents=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARTA_")}
    env.update(
        WARTA_DATABASE_URL=f"sqlite+aiosqlite:///{tmp / 'warta.db'}",
        WARTA_SECRET_KEY="bench-secret-" + "k" * 40,
        WARTA_VAR_DIR=str(tmp / "var"),
        WARTA_DKIM_DIR=str(tmp / "dkim"),
        WARTA_MTA_SPOOL_DIR=str(tmp / "spool"),
        WARTA_MTA_SUBMISSION=f"127.0.0.1:{port}",
        WARTA_MTA_INBOUND=f"127.0.0.1:{_free_port()}",
        WARTA_MTA_DELIVERY="mx",
        WARTA_MTA_TRANSPORT_MAP=json.dumps({DOMAIN: f"127.0.0.1:{next_hop}"}),
        WARTA_MTA_HOSTNAME="warta.bench.test",
        WARTA_MTA_PROCESSES=os.environ.get("BENCH_MTA_PROCESSES", "1"),
    )
    (tmp / "dkim").mkdir()
    if dkim:
        sys.path.insert(0, str(ROOT))
        from workers.mta.dkim import generate_key

        generate_key(tmp / "dkim", DOMAIN, "bench")
    warta = str(Path(sys.executable).parent / "warta")
    subprocess.run(
        [warta, "migrate"],
        env=env,
        cwd=tmp,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Warta(tmp, env, port)


@contextlib.contextmanager
def _warta(setup: Warta) -> Iterator[subprocess.Popen[bytes]]:
    warta = str(Path(sys.executable).parent / "warta")
    log = setup.tmp / "mta.log"
    with _process([warta, "mta"], log, env=setup.env, cwd=setup.tmp) as proc:
        _wait_port(setup.port, proc, log, 60)
        yield proc
        if proc.poll() is not None:
            raise RuntimeError(f"warta mta died:\n{_tail(log)}")


# --- Postfix -----------------------------------------------------------------------------


MASTER_CF = """\
{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
proxywrite unix - - n -  1 proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


@dataclass
class Postfix:
    """A private Postfix instance: config, queue and data directories under one temp dir."""

    tmp: Path
    port: int

    @property
    def config(self) -> Path:
        return self.tmp / "etc"

    @property
    def queued(self) -> int:
        queue = self.tmp / "queue"
        return sum(_files(queue / sub) for sub in QUEUE_SUBDIRS)


def _postfix_available() -> str | None:
    """None if a private Postfix can run here, else why not."""
    missing = [t for t in ("postfix", "postconf", "smtp-source", "smtp-sink") if not _tool(t)]
    if missing:
        return f"not installed ({', '.join(missing)} missing)"
    if os.geteuid() != 0:
        return "needs root to start a private instance"
    return None


@contextlib.contextmanager
def _postfix(tmp: Path, next_hop: int) -> Iterator[Postfix]:
    tmp.mkdir(parents=True)
    instance = Postfix(tmp, _free_port())
    etc, queue, data = instance.config, tmp / "queue", tmp / "data"
    for directory in (etc, queue, data):
        directory.mkdir()
    shutil.chown(data, "postfix")
    (etc / "master.cf").write_text(MASTER_CF.format(port=f"127.0.0.1:{instance.port}"))
    (etc / "main.cf").write_text(
        "\n".join(
            [
                "compatibility_level = 3.6",
                f"queue_directory = {queue}",
                f"data_directory = {data}",
                "mail_owner = postfix",
                "setgid_group = postdrop",
                f"maillog_file = {tmp / 'maillog'}",
                f"maillog_file_prefixes = /var, /dev/stdout, {tmp}",
                "myhostname = postfix.bench.test",
                "mydomain = bench.test",
                "myorigin = $myhostname",
                "inet_interfaces = loopback-only",
                "inet_protocols = ipv4",
                "mydestination =",
                f"relay_domains = {DOMAIN}",
                "mynetworks = 127.0.0.0/8",
                "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
                f"transport_maps = inline:{{{DOMAIN}=smtp:[127.0.0.1]:{next_hop}}}",
                "alias_maps =",
                "alias_database =",
                "local_recipient_maps =",
                "biff = no",
                "smtp_tls_security_level = none",
                "smtpd_tls_security_level = none",
                "",
            ]
        )
    )
    postfix = _tool("postfix")
    assert postfix is not None
    log = tmp / "postfix.log"
    with log.open("ab") as out:
        subprocess.run(
            [postfix, "-c", str(etc), "start"], stdout=out, stderr=subprocess.STDOUT, check=True
        )
    try:
        _wait_port(instance.port, None, log, 30)
        yield instance
    finally:
        pid_file = queue / "pid" / "master.pid"
        master = 0
        with contextlib.suppress(OSError, ValueError):
            master = int(pid_file.read_text().split()[0])
        with log.open("ab") as out:
            subprocess.run([postfix, "-c", str(etc), "stop"], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while master and time.monotonic() < deadline:
            try:
                os.kill(master, 0)  # `postfix stop` returns before the master has exited
            except OSError:
                break
            time.sleep(0.1)


# --- the two figures ---------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Figure:
    """One measured rate; for Warta also the MTA process's CPU time over the run."""

    rate: float
    elapsed: float
    cpu: float | None = None


def _accept_warta(tmp: Path, messages: int, sessions: int, reuse: bool) -> Figure:
    setup = _warta_setup(tmp, next_hop=_free_port(), dkim=False)
    with _warta(setup) as proc:
        cpu = _cpu_seconds(proc.pid)
        elapsed = _smtp_source(setup.port, messages, sessions, tmp / "source.log", reuse)
        cpu = _cpu_seconds(proc.pid) - cpu
        spooled = setup.spooled
    if spooled != messages:
        raise RuntimeError(f"Warta spooled {spooled} of {messages} messages")
    return Figure(messages / elapsed, elapsed, cpu)


def _accept_postfix(tmp: Path, messages: int, sessions: int, reuse: bool) -> Figure:
    with _postfix(tmp, next_hop=_free_port()) as pf:
        elapsed = _smtp_source(pf.port, messages, sessions, tmp / "source.log", reuse)
        # smtpd answers 250 only after cleanup fsynced the queue file, so all are queued.
        queued = pf.queued
    if queued != messages:
        raise RuntimeError(f"Postfix queued {queued} of {messages} messages")
    return Figure(messages / elapsed, elapsed)


def _relay_warta(tmp: Path, sink: int, messages: int, sessions: int) -> Figure:
    setup = _warta_setup(tmp, next_hop=sink, dkim=True)
    with _warta(setup) as proc:
        cpu = _cpu_seconds(proc.pid)
        started = time.perf_counter()
        _smtp_source(setup.port, messages, sessions, tmp / "source.log")
        _wait_empty(lambda: setup.spooled, "Warta")
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds(proc.pid) - cpu
    return Figure(messages / elapsed, elapsed, cpu)


def _relay_postfix(tmp: Path, sink: int, messages: int, sessions: int) -> Figure:
    with _postfix(tmp, next_hop=sink) as pf:
        started = time.perf_counter()
        _smtp_source(pf.port, messages, sessions, tmp / "source.log")
        _wait_empty(lambda: pf.queued, "Postfix")
        elapsed = time.perf_counter() - started
    return Figure(messages / elapsed, elapsed)


@dataclass
class Sink:
    """`smtp-sink -c`: its running counters (`... mesg=N\\r`) tell how many it accepted."""

    port: int
    log: Path

    @property
    def accepted(self) -> int:
        counters = self.log.read_bytes().replace(b"\r", b"\n").split()
        found = [int(c[5:]) for c in counters if c.startswith(b"mesg=") and c[5:].isdigit()]
        return found[-1] if found else 0


@contextlib.contextmanager
def _sink(tmp: Path) -> Iterator[Sink]:
    tool = _tool("smtp-sink")
    if tool is None:
        raise RuntimeError("smtp-sink is not installed")
    port = _free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    log = tmp / "sink.log"
    with _process([tool, *user, "-c", f"127.0.0.1:{port}", "1000"], log) as proc:
        _wait_port(port, proc, log, 10)
        yield Sink(port, log)


def _check_sink(sink: Sink, before: int, messages: int, who: str) -> None:
    deadline = time.monotonic() + 5  # the counter is printed a moment after the 250
    while sink.accepted - before < messages and time.monotonic() < deadline:
        time.sleep(0.05)
    if (got := sink.accepted - before) != messages:
        raise RuntimeError(f"{who}: the sink accepted {got} of {messages} messages")


def _row(figure: str, warta: Figure, postfix: Figure | None) -> str:
    w = f"{warta.rate:,.0f}"
    if postfix is None:
        return f"  {figure:<40} {w:>8} {'skipped':>8} {'-':>7}  -"
    ratio = warta.rate / postfix.rate
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    return f"  {figure:<40} {w:>8} {postfix.rate:>8,.0f} {ratio:>6.2f}x  {verdict}"


def _run(tmp: Path, messages: int, relay_messages: int, sessions: int) -> None:
    if _tool("smtp-source") is None or _tool("smtp-sink") is None:
        raise RuntimeError(
            "smtp-source and smtp-sink (Postfix) are needed as client and sink: install "
            "postfix (see issue 4, Benchmarks) and run again"
        )
    skip = _postfix_available()
    if skip:
        print(f"  Postfix {skip}: measuring Warta alone, no comparison", flush=True)
    results: dict[str, tuple[Figure, Figure | None]] = {}

    for reuse in (False, True):
        label = f"acceptance+fsync, {sessions} sess, " + ("reused conn" if reuse else "conn/msg")
        print(f"  {label}: {messages:,} x {SIZE} B …", flush=True)
        warta = _accept_warta(tmp / f"accept-warta-{reuse}", messages, sessions, reuse)
        postfix = None
        if not skip:
            postfix = _accept_postfix(tmp / f"accept-postfix-{reuse}", messages, sessions, reuse)
        results[label] = (warta, postfix)

    label = f"relay to smtp-sink, {sessions} sess (DKIM)"
    print(f"  {label}: {relay_messages:,} x {SIZE} B …", flush=True)
    with _sink(tmp) as sink:
        before = sink.accepted
        warta = _relay_warta(tmp / "relay-warta", sink.port, relay_messages, sessions)
        _check_sink(sink, before, relay_messages, "Warta")
        postfix = None
        if not skip:
            before = sink.accepted
            postfix = _relay_postfix(tmp / "relay-postfix", sink.port, relay_messages, sessions)
            _check_sink(sink, before, relay_messages, "Postfix")
    results[label] = (warta, postfix)

    print(f"\n  {'figure (msg/s)':<40} {'Warta':>8} {'Postfix':>8} {'ratio':>7}  target ≥ 1.0x")
    for figure, (w, p) in results.items():
        print(_row(figure, w, p))
    print("\n  warta mta CPU (all threads) per run, of one core's time:")
    for figure, (w, _) in results.items():
        assert w.cpu is not None
        print(f"    {figure:<40} {w.cpu:5.1f} s over {w.elapsed:5.1f} s = {w.cpu / w.elapsed:4.0%}")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run both comparisons once."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=4000, help="acceptance messages")
    parser.add_argument("--relay-messages", type=int, default=4000, help="relay messages")
    parser.add_argument("--sessions", type=int, default=SESSIONS)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args(argv if argv is not None else [])
    tmp = Path(tempfile.mkdtemp(prefix="warta-mta-bench-"))
    os.chmod(tmp, 0o755)  # smtp-sink and postfix daemons run unprivileged
    try:
        _run(tmp, args.messages, args.relay_messages, args.sessions)
    finally:
        if args.keep:
            print(f"  logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
