"""The worker DKIM-signs transactional mail before it submits it, with the MTA's keys."""

from __future__ import annotations

import httpx
import pytest

from app.core.settings import Settings
from app.mail.dkim import generate_key, leading_signers
from tests.helpers.api import eventually
from tests.helpers.dkim import both_pass, straight_to_sink
from tests.helpers.sinks import SinkHandler


@pytest.fixture
def engine_settings(settings: Settings, sink: tuple[str, SinkHandler]) -> Settings:
    return straight_to_sink(settings, sink[0])


async def test_a_transactional_message_is_signed_by_the_worker(
    api: httpx.AsyncClient,
    worker: None,
    sink: tuple[str, SinkHandler],
    engine_settings: Settings,
) -> None:
    record = generate_key(engine_settings.dkim_dir, "example.com", "sel1")
    response = await api.post(
        "/api/v1/messages",
        json={
            "from": "shop@example.com",
            "to": "alice@example.org",
            "subject": "Receipt",
            "text": "Thanks for order {{ order }}",
            "data": {"order": 1},
            "stream": "broadcast",
        },
    )
    assert response.status_code == 202, response.text

    async def arrived() -> bool:
        return len(sink[1].snapshot()) == 1

    await eventually(arrived, 20, "message at the sink")
    (received,) = sink[1].snapshot()
    assert leading_signers(received.data, 3) == [("example.com", "sel1")]
    both_pass(received.data, (record,))
    assert b"list-unsubscribe-post" in received.data.split(b"bh=")[0]
