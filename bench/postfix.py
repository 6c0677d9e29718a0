"""Postfix as the peer: a private Postfix instance, and its `smtp-sink` and `smtp-source`.

The private instance has its own config, queue and data directories under one temp dir and
its smtpd on a free loopback port; it relays one domain to a fixed next hop (as Warta's
transport map does) and keeps Postfix's defaults otherwise (process and destination
concurrency limits, no signing). The system's Postfix is not touched. Starting an instance
needs root (its daemons drop to the `postfix` user).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.processes import free_port, process, tail, wait_port

SBIN = Path("/usr/sbin")
QUEUE_SUBDIRS = ("maildrop", "incoming", "active", "deferred", "hold")
DOMAIN = "example.com"


def tool(name: str) -> str | None:
    """Path of a Postfix program (PATH, then /usr/sbin), or None."""
    found = shutil.which(name)
    if found:
        return found
    candidate = SBIN / name
    return str(candidate) if os.access(candidate, os.X_OK) else None


def unavailable() -> str | None:
    """None if a private Postfix can run here, else why not."""
    missing = [t for t in ("postfix", "postconf", "smtp-source", "smtp-sink") if not tool(t)]
    if missing:
        return f"not installed ({', '.join(missing)} missing; `make bench` installs postfix)"
    if os.geteuid() != 0:
        return "needs root to start a private instance"
    return None


def count_files(directory: Path) -> int:
    """Files anywhere below `directory`."""
    return sum(len(files) for _, _, files in os.walk(directory))


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
    """A running private Postfix instance."""

    tmp: Path
    port: int

    @property
    def config(self) -> Path:
        return self.tmp / "etc"

    @property
    def queued(self) -> int:
        """Messages in the queue (any state)."""
        queue = self.tmp / "queue"
        return sum(count_files(queue / sub) for sub in QUEUE_SUBDIRS)

    @property
    def master_pid(self) -> int:
        """The master daemon, root of every Postfix process of this instance (0 if gone)."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.tmp / "queue" / "pid" / "master.pid").read_text().split()[0])
        return 0


def _main_cf(tmp: Path, next_hop: int, domain: str) -> str:
    return "\n".join(
        [
            "compatibility_level = 3.6",
            f"queue_directory = {tmp / 'queue'}",
            f"data_directory = {tmp / 'data'}",
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
            f"relay_domains = {domain}",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            f"transport_maps = inline:{{{domain}=smtp:[127.0.0.1]:{next_hop}}}",
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            "biff = no",
            "smtp_tls_security_level = none",
            "smtpd_tls_security_level = none",
            "",
        ]
    )


@contextlib.contextmanager
def instance(tmp: Path, next_hop: int, domain: str = DOMAIN) -> Iterator[Postfix]:
    """A private Postfix relaying `domain` to 127.0.0.1:`next_hop`; stopped on exit."""
    tmp.mkdir(parents=True)
    os.chmod(tmp, 0o755)  # the daemons run as the postfix user
    postfix = Postfix(tmp, free_port())
    etc, data = postfix.config, tmp / "data"
    for directory in (etc, tmp / "queue", data):
        directory.mkdir()
    shutil.chown(data, "postfix")
    (etc / "master.cf").write_text(MASTER_CF.format(port=f"127.0.0.1:{postfix.port}"))
    (etc / "main.cf").write_text(_main_cf(tmp, next_hop, domain))
    program = tool("postfix")
    assert program is not None
    log = tmp / "postfix.log"
    with log.open("ab") as out:
        subprocess.run(
            [program, "-c", str(etc), "start"], stdout=out, stderr=subprocess.STDOUT, check=True
        )
    try:
        wait_port(postfix.port, None, log, 30)
        yield postfix
    finally:
        master = postfix.master_pid
        with log.open("ab") as out:
            subprocess.run([program, "-c", str(etc), "stop"], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while master and time.monotonic() < deadline:
            try:
                os.kill(master, 0)  # `postfix stop` returns before the master has exited
            except OSError:
                break
            time.sleep(0.1)


# --- smtp-sink and smtp-source -----------------------------------------------------------


@dataclass
class Sink:
    """`smtp-sink -c`: its running counters (`... mesg=N\\r`) tell how many it accepted."""

    port: int
    log: Path
    pid: int

    @property
    def accepted(self) -> int:
        """Messages accepted since it started."""
        counters = self.log.read_bytes().replace(b"\r", b"\n").split()
        found = [int(c[5:]) for c in counters if c.startswith(b"mesg=") and c[5:].isdigit()]
        return found[-1] if found else 0

    def wait_for(self, before: int, messages: int, who: str, timeout: float = 5) -> None:
        """Fail unless `messages` more than `before` arrive within `timeout` seconds."""
        deadline = time.monotonic() + timeout  # the counter is printed a moment after the 250
        while self.accepted - before < messages and time.monotonic() < deadline:
            time.sleep(0.05)
        if (got := self.accepted - before) != messages:
            raise RuntimeError(f"{who}: the sink accepted {got} of {messages} messages")


@contextlib.contextmanager
def sink(tmp: Path) -> Iterator[Sink]:
    """Postfix's C `smtp-sink` on a free port, counting what it accepts."""
    program = tool("smtp-sink")
    if program is None:
        raise RuntimeError("smtp-sink is not installed: `make bench` installs postfix")
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    log = tmp / f"sink-{port}.log"
    with process([program, *user, "-c", f"127.0.0.1:{port}", "1000"], log) as proc:
        wait_port(port, proc, log, 10)
        yield Sink(port, log, proc.pid)


def smtp_source(
    port: int,
    messages: int,
    sessions: int,
    log: Path,
    *,
    size: int,
    sender: str,
    recipient: str,
    reuse: bool = False,
) -> float:
    """Send `messages` through `sessions` parallel sessions with `smtp-source`; the wall time.

    By default smtp-source opens a new connection per message; `reuse` (-d) keeps each
    session's connection for the next message, as the campaign sender does.
    """
    program = tool("smtp-source")
    if program is None:
        raise RuntimeError("smtp-source is not installed: `make bench` installs postfix")
    args = [program, "-s", str(sessions), "-m", str(messages), "-l", str(size), "-c"]
    args += ["-d"] if reuse else []
    args += ["-f", sender, "-t", recipient, f"127.0.0.1:{port}"]
    started = time.perf_counter()
    with log.open("ab") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source exited {done.returncode}:\n{tail(log)}")
    return elapsed
