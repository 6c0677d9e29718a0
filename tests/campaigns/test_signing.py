"""The worker DKIM-signs the campaign mail it builds, with the MTA's keys (WARTA_DKIM_DIR)."""

from __future__ import annotations

import httpx
import pytest

from app.core.settings import Settings
from app.mail.dkim import generate_key, leading_signers
from tests.helpers.api import create_campaign, post_json, wait_for_status
from tests.helpers.dkim import both_pass, straight_to_sink
from tests.helpers.sinks import SinkHandler


@pytest.fixture
def engine_settings(settings: Settings, sink: tuple[str, SinkHandler]) -> Settings:
    return straight_to_sink(settings, sink[0])


async def test_the_worker_signs_what_it_builds_for_a_domain_with_a_key(
    api: httpx.AsyncClient,
    worker: None,
    sink: tuple[str, SinkHandler],
    engine_settings: Settings,
) -> None:
    record = generate_key(engine_settings.dkim_dir, "example.com", "sel1")
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    for n in range(3):
        await post_json(api, "/api/v1/subscribers", {"email": f"r{n}@example.org", "lists": [news]})
    signed = await create_campaign(api, news)
    await post_json(api, f"/api/v1/campaigns/{signed}/schedule", {})
    await wait_for_status(api, signed, "finished")
    received = sink[1].snapshot()
    assert len(received) == 3
    for item in received:
        assert leading_signers(item.data, 3) == [("example.com", "sel1")]
        both_pass(item.data, (record,))
    # A From domain without a key: left unsigned, as the MTA would leave it.
    other = await create_campaign(api, news, from_email="news@nokey.example")
    await post_json(api, f"/api/v1/campaigns/{other}/schedule", {})
    await wait_for_status(api, other, "finished")
    unsigned = [item for item in sink[1].snapshot() if b"nokey.example" in item.data]
    assert len(unsigned) == 3
    assert all(not item.data.startswith(b"DKIM-Signature") for item in unsigned)
