"""A `warta` command run as a process: its own var dir, database, free ports, embedded Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.api import ADMIN_TOKEN
from tests.helpers.consoles import warta_env
from tests.helpers.servers import free_port


@pytest.fixture
def api_port() -> int:
    return free_port()


@pytest.fixture
def cli_env(database_url: str, api_port: int, tmp_path: Path) -> dict[str, str]:
    """WARTA_* for a command under test; WARTA_REDIS_URL is empty, so it starts its own Redis."""
    var = tmp_path / "var"
    return warta_env(
        var_dir=str(var),
        database_url=database_url,
        redis_url="",
        api_port=str(api_port),
        public_url=f"http://127.0.0.1:{api_port}",
        mta_submission=f"127.0.0.1:{free_port()}",
        mta_inbound=f"127.0.0.1:{free_port()}",
        mta_spool_dir=str(var / "spool"),
        dkim_dir=str(var / "dkim"),
        secret_key="cli-test-secret-" + "z" * 40,
        bootstrap_api_key=ADMIN_TOKEN,
        mta_hostname="warta.test.example",
    )
