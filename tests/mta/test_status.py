"""How often an MTA instance publishes its status snapshot."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.helpers.servers import free_port
from workers.mta import status
from workers.mta.status import (
    PUBLISH_AT_LEAST_EVERY,
    PUBLISH_EVERY,
    SNAPSHOT_TTL,
    StatusPublisher,
    publish_interval,
)


def test_a_cheap_snapshot_is_published_every_second() -> None:
    assert publish_interval(0.0) == PUBLISH_EVERY
    assert publish_interval(0.002) == PUBLISH_EVERY


def test_a_costly_walk_of_a_large_queue_is_published_less_often() -> None:
    # 30 ms a walk (tens of thousands of deferred envelopes) once a second is 3 % of the
    # event loop; every 3 s it is 1 %.
    assert publish_interval(0.03) == pytest.approx(3.0)
    assert publish_interval(0.04) > publish_interval(0.03)


def test_an_instance_is_published_before_its_snapshot_expires_whatever_the_cost() -> None:
    assert publish_interval(10.0) == PUBLISH_AT_LEAST_EVERY < SNAPSHOT_TTL
    assert publish_interval(60.0) == PUBLISH_AT_LEAST_EVERY


def _walk_of(seconds: float) -> Any:
    """A snapshot whose walk takes `seconds` of the loop, as a large queue's does."""

    def walk(agent: object, spool: object, now: float) -> dict[str, Any]:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            pass
        return {"updated_at": now}

    return walk


async def test_the_publisher_writes_the_snapshot_and_puts_off_the_next_by_its_cost(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status, "snapshot", _walk_of(0.03))
    publisher = StatusPublisher(Redis.from_url(redis_url), agent=None, spool=None)  # type: ignore[arg-type]
    try:
        wait = await publisher.publish()
        stored = await publisher.redis.get(publisher.key)
        expiry = await publisher.redis.ttl(publisher.key)
    finally:
        await publisher.stop()
    assert wait >= 3.0
    assert json.loads(stored)["updated_at"] > 0
    assert 0 < expiry <= SNAPSHOT_TTL


async def test_a_failed_write_is_retried_a_second_later_even_after_a_costly_walk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(status, "snapshot", _walk_of(0.03))
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    publisher = StatusPublisher(down, agent=None, spool=None)  # type: ignore[arg-type]
    try:
        assert await publisher.publish() == PUBLISH_EVERY
    finally:
        await publisher.stop()
