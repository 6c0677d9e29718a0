"""Fixtures: an in-process MTA delivering example.com to a 'remote MX' sink.

Imported by the conftest of each test folder that runs mail through the MTA (mta, bounces).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.core.settings import Settings
from tests.helpers.servers import free_port
from tests.helpers.sinks import SinkHandler, smtp_sink
from workers.mta.service import MtaService
from workers.mta_process import start_mta


@pytest.fixture
def remote() -> Iterator[tuple[str, SinkHandler]]:
    """The 'remote MX' for example.com."""
    with smtp_sink() as server:
        yield server


@pytest.fixture
def mta_settings(settings: Settings, remote: tuple[str, SinkHandler], tmp_path: Path) -> Settings:
    """Fresh ports and spool, example.com routed to `remote`, retries in fractions of a second."""
    return settings.model_copy(
        update={
            "mta_submission": f"127.0.0.1:{free_port()}",
            "mta_inbound": f"127.0.0.1:{free_port()}",
            "mta_delivery": "mx",
            "mta_transport_map": json.dumps({"example.com": remote[0]}),
            "mta_spool_dir": tmp_path / "spool",
            "dkim_dir": tmp_path / "dkim",
            "mta_retry_min": 0.2,
            "mta_retry_max": 1,
            "retry_base": 0.2,
            "bounce_domain": "bounces.warta.example",
        }
    )


@pytest.fixture
async def mta(mta_settings: Settings) -> AsyncIterator[MtaService]:
    service = await start_mta(mta_settings)
    yield service
    await service.stop(grace=5)


# The engine fixtures in tests/conftest.py read `engine_settings`: submit to this MTA.
@pytest.fixture
def engine_settings(mta_settings: Settings) -> Settings:
    return mta_settings
