"""`warta api` as a process: JSON logs on request, a clean stop on SIGTERM."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx

from app.core.redis import socket_path_for
from tests.helpers.api import eventually
from tests.helpers.consoles import WARTA, Console, processes_mentioning


async def test_json_logs_and_a_clean_stop(
    cli_env: dict[str, str], api_port: int, tmp_path: Path
) -> None:
    env = {**cli_env, "WARTA_LOG_FORMAT": "json"}
    with Console([WARTA, "api"], env, tmp_path) as api:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as client:

            async def healthy() -> bool:
                assert api.process.poll() is None, api.text
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(healthy, 60, "the API answering")
        await api.wait_for("/healthz")
        assert processes_mentioning(str(socket_path_for(tmp_path / "var"))), "embedded Redis"
        assert api.stop(signal.SIGTERM) == 0, api.text

    entries = [json.loads(line) for line in api.lines]  # every line is one JSON object
    access = [entry for entry in entries if entry["logger"] == "uvicorn.access"]
    assert access[-1]["method"] == "GET"
    assert access[-1]["path"] == "/healthz"
    assert access[-1]["status"] == 200
    assert {"time", "level", "logger", "message"} <= set(access[-1])
    assert not processes_mentioning(str(socket_path_for(tmp_path / "var"))), "Redis stopped"
