"""`warta dev` as a newcomer meets it: a banner, then quiet; stopped, it leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from app.core.redis import socket_path_for
from tests.helpers.api import ADMIN_TOKEN, create_campaign, eventually, post_json
from tests.helpers.consoles import WARTA, Console, alive, children_of, processes_mentioning

READY = "ready; Ctrl-C stops"


async def _answering(dev: Console, api_port: int) -> None:
    """Wait until the API of `dev` answers /healthz."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as client:

        async def healthy() -> bool:
            assert dev.process.poll() is None, dev.text
            try:
                return (await client.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(healthy, 60, "the API answering")


def _started_by(dev: Console, var: Path) -> set[int]:
    """What `warta dev` runs besides itself: its children and the embedded redis-server."""
    redis_server = set(processes_mentioning(str(socket_path_for(var))))
    assert redis_server, "the embedded Redis runs"
    return children_of(dev.pid) | redis_server


async def test_an_idle_dev_prints_nothing_after_its_banner(
    cli_env: dict[str, str], api_port: int, tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{api_port}"
    with Console([WARTA, "dev"], cli_env, tmp_path) as dev:
        banner_end = await dev.wait_for(READY)
        banner = dev.lines[: banner_end + 1]
        assert f"Warta API      {base}/api/v1" in banner, dev.text
        curl = f'curl -H "Authorization: Bearer {ADMIN_TOKEN}" {base}/api/v1/lists'
        assert any(line.endswith(curl) for line in banner), "one line, even when piped"

        # Due in 2 s: until then the per-second crons run with nothing to do, then one starts it.
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as api:
            news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
            await post_json(api, "/api/v1/subscribers", {"email": "a@example.com", "lists": [news]})
            send_at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
            campaign_id = await create_campaign(api, news, send_at=send_at)
            await post_json(api, f"/api/v1/campaigns/{campaign_id}/schedule", {})
        started = await dev.wait_for(f"campaign {campaign_id} started: 1 recipients")

        idle = dev.lines[banner_end + 1 : started]
        assert idle, "the requests are logged"
        assert all("INFO uvicorn.access:" in line for line in idle), dev.text
        assert not any("arq" in line or "cron:" in line for line in dev.lines), dev.text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_everything_dev_started(
    cli_env: dict[str, str], api_port: int, tmp_path: Path, sig: signal.Signals
) -> None:
    var = tmp_path / "var"
    with Console([WARTA, "dev"], cli_env, tmp_path) as dev:
        await _answering(dev, api_port)
        started = _started_by(dev, var)
        assert dev.stop(sig) == 0, dev.text
    assert not [pid for pid in started if alive(pid)], dev.text
    assert not processes_mentioning(str(socket_path_for(var)))
    assert (var / "redis.db").exists(), "the embedded Redis saved its snapshot"
    assert not (var / "redis.pid").exists()


async def test_a_killed_dev_takes_its_redis_along(
    cli_env: dict[str, str], api_port: int, tmp_path: Path
) -> None:
    var = tmp_path / "var"
    with Console([WARTA, "dev"], cli_env, tmp_path) as dev:
        await _answering(dev, api_port)
        started = _started_by(dev, var)
        assert dev.stop(signal.SIGKILL) == -signal.SIGKILL

    async def all_gone() -> bool:
        return not [pid for pid in started if alive(pid)]

    await eventually(all_gone, 30, "the processes of a killed `warta dev` gone")
    assert (var / "redis.db").exists(), "SIGTERM from the kernel: the server saved, then exited"


def _mta_of(dev: Console) -> int:
    """The child process that runs `warta dev`'s MTA."""
    (pid,) = [pid for pid in children_of(dev.pid) if pid in processes_mentioning("dev-mta")]
    return pid


async def test_the_mta_runs_in_a_child_process_that_stops_with_dev(
    cli_env: dict[str, str], api_port: int, tmp_path: Path
) -> None:
    with Console([WARTA, "dev"], cli_env, tmp_path) as dev:
        await dev.wait_for(READY)
        mta = _mta_of(dev)
        submission = cli_env["WARTA_MTA_SUBMISSION"].rsplit(":", 1)
        greeting = await _smtp_greeting(submission[0], int(submission[1]))
        assert greeting.startswith(b"220 "), "the MTA listens before the banner says ready"
        assert dev.stop(signal.SIGINT) == 0, dev.text
    assert not alive(mta), dev.text
    assert "MTA draining" in dev.text, "the MTA was stopped with SIGTERM, and drained"


async def test_a_dead_mta_stops_dev_and_says_so(
    cli_env: dict[str, str], api_port: int, tmp_path: Path
) -> None:
    var = tmp_path / "var"
    with Console([WARTA, "dev"], cli_env, tmp_path) as dev:
        await dev.wait_for(READY)
        started = _started_by(dev, var)
        os.kill(_mta_of(dev), signal.SIGKILL)
        assert dev.process.wait(60) == 1, dev.text
        dev.stop()
    assert "error: the MTA stopped: its process was killed by signal 9" in dev.text, dev.text
    assert not [pid for pid in started if alive(pid)], dev.text
    assert not processes_mentioning(str(socket_path_for(var))), "the embedded Redis stopped too"


async def _smtp_greeting(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        return await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_an_mta_that_cannot_start_stops_dev_with_one_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    var = tmp_path / "var"
    host, port = cli_env["WARTA_MTA_SUBMISSION"].rsplit(":", 1)
    taken = await asyncio.start_server(lambda r, w: w.close(), host, int(port))
    try:
        with Console([WARTA, "dev"], cli_env, tmp_path) as dev:
            assert dev.process.wait(120) == 1, dev.text
            dev.stop()
    finally:
        taken.close()
        await taken.wait_closed()
    assert "error: the MTA did not start: it exited with status 1" in dev.text, dev.text
    assert "Traceback" not in dev.text, dev.text
    assert READY not in dev.text
    assert not processes_mentioning(str(socket_path_for(var))), "the embedded Redis stopped"
