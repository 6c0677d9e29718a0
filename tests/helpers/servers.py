"""Throwaway PostgreSQL and Redis servers for the test run.

Each server lives in its own temporary directory on a free loopback port and is
stopped, and its directory removed, when its context exits, however it exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

START_ATTEMPTS = 3
"""Tries with a fresh port each, should another process grab ours in between."""


class ServerError(RuntimeError):
    """A test server could not be found, started or used."""


def find_pg_bin(name: str) -> str:
    """Path of a PostgreSQL program, from PATH or the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    for bin_dir in sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True
    ):
        candidate = bin_dir / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServerError(f"PostgreSQL program {name!r} not found; run scripts/ensure-system-deps.sh")


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class PostgresServer:
    """A PostgreSQL cluster made by initdb in a temporary directory, for one test run."""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        self.settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            **(settings or {}),
        }
        self.port = 0
        self._tmp: Path | None = None
        # PostgreSQL refuses to run as root; then its programs run as this user.
        self._user = _unprivileged_user() if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the `postgres` database."""
        return self.url_for("postgres")

    @property
    def dsn(self) -> str:
        """libpq/asyncpg URL of the `postgres` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL of `database` on this server."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Run initdb, then start the server and wait until it accepts connections."""
        base = "/tmp" if self._user else None  # the postgres user must reach it
        self._tmp = Path(tempfile.mkdtemp(prefix="warta-pg-", dir=base))
        atexit.register(self.stop)
        try:
            if self._user:
                shutil.chown(self._tmp, user=self._user)
            self._run(
                find_pg_bin("initdb"),
                *("-D", str(self._data), "-U", "postgres", "--auth=trust"),
                *("-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
            )
            for attempt in range(1, START_ATTEMPTS + 1):
                self.port = free_port()
                try:
                    self._pg_ctl("-o", self._server_options(), "-l", str(self._log), "-w", "start")
                except ServerError:
                    if attempt == START_ATTEMPTS:
                        raise
                else:
                    return
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server at once (tests keep nothing) and remove its directory."""
        atexit.unregister(self.stop)
        if self._tmp is not None and (self._data / "postmaster.pid").exists():
            with contextlib.suppress(ServerError):
                self._pg_ctl("-m", "immediate", "-w", "stop")
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database `name`, a copy of `template` if given, and return its SQLAlchemy URL.

        A template must have no open connections while it is copied.
        """
        options = ("-T", template) if template else ()
        self._run(
            find_pg_bin("createdb"),
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", *options, name),
            as_user=False,
        )
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name`, disconnecting its sessions."""
        self._run(
            find_pg_bin("dropdb"),
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "--force", name),
            as_user=False,
        )

    @property
    def _data(self) -> Path:
        assert self._tmp is not None, "server not started"
        return self._tmp / "data"

    @property
    def _log(self) -> Path:
        assert self._tmp is not None, "server not started"
        return self._tmp / "postgres.log"

    def _server_options(self) -> str:
        # pg_ctl hands these to a shell.
        options = [f"-p {self.port}", f"-k {shlex.quote(str(self._tmp))}"]
        options += ["-c listen_addresses=127.0.0.1"]
        options += [f"-c {shlex.quote(f'{key}={value}')}" for key, value in self.settings.items()]
        return " ".join(options)

    def _pg_ctl(self, *args: str) -> None:
        self._run(find_pg_bin("pg_ctl"), "-D", str(self._data), "-t", "60", *args)

    def _run(self, *command: str, as_user: bool = True) -> None:
        if as_user and self._user:
            command = ("runuser", "-u", self._user, "--", *command)
        result = subprocess.run(
            command,
            cwd=self._tmp,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(
                f"{' '.join(command)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\nserver log:\n{_tail(self._log)}"
            )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    raise ServerError("running as root, but there is no 'postgres' or 'nobody' user to run as")


class RedisServer:
    """A redis-server child process without persistence, for one test run."""

    def __init__(self, startup_timeout: float = 10.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self._tmp: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start redis-server and wait until it answers PING."""
        executable = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(executable, os.X_OK):
            raise ServerError("redis-server not found; run scripts/ensure-system-deps.sh")
        self._tmp = Path(tempfile.mkdtemp(prefix="warta-redis-"))
        atexit.register(self.stop)
        try:
            for attempt in range(1, START_ATTEMPTS + 1):
                self.port = free_port()
                self._process = subprocess.Popen(
                    [
                        executable,
                        *("--port", str(self.port), "--bind", "127.0.0.1"),
                        *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                        *("--dir", str(self._tmp), "--logfile", str(self._tmp / "redis.log")),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    self._wait_for_pong()
                except ServerError:
                    self._terminate()
                    if attempt == START_ATTEMPTS:
                        raise
                else:
                    return
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop redis-server and remove its directory."""
        atexit.unregister(self.stop)
        self._terminate()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _terminate(self) -> None:
        if self._process is None:
            return
        process, self._process = self._process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _wait_for_pong(self) -> None:
        assert self._process is not None and self._tmp is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if ping(self.port):
                return
            time.sleep(0.01)
        raise ServerError(
            f"redis-server on port {self.port} did not answer PING:\n{_tail(self._tmp / 'redis.log')}"
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def ping(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a Redis server on `host:port` answers PING with +PONG."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return reply == b"+PONG\r\n"


_HOLDING = {"01", "08"}
"""/proc/net/tcp states of a socket still holding a connection: ESTABLISHED, CLOSE_WAIT."""


def connections_held(port: int, *, by_clients: bool = False) -> int:
    """How many sockets of the server on `port` (or, `by_clients`, of its clients) still
    hold a connection to it.

    A peer that hung up leaves the other side's socket in CLOSE_WAIT until that side
    notices and closes it; listening and closing sockets are not counted.
    """
    address = 2 if by_clients else 1  # /proc/net/tcp: local_address, rem_address
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[address].rpartition(":")[2], 16) == port and fields[3] in _HOLDING:
                    held += 1
    return held


def wait_for_hangups(port: int, timeout: float = 5.0) -> bool:
    """Whether the server on `port` closed every connection within `timeout` seconds.

    A threaded aiosmtpd `Controller.stop()` stops its loop, then cancels the sessions; one
    it has not yet seen end (a TLS handshake its client just aborted: 1 in 4 runs of
    tests/mta/test_tls.py on a busy machine) is then closed by a cancelled task in the
    controller's last loop run. Stopping once the server has hung up takes that race out;
    a server that never hangs up is a leak the caller should fail on.
    """
    deadline = time.monotonic() + timeout
    while connections_held(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True
