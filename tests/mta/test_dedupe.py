"""The messages accepted, shared between MTA instances through Redis: batched round trips."""

from __future__ import annotations

import asyncio
import hashlib
import socket

from redis.asyncio import Redis

from tests.helpers.api import eventually
from workers.mta.dedupe import SharedMessageIds
from workers.mta.message_id_log import dedupe_key

NAME = "warta-dedupe-test"


def key(message_id: str) -> str:
    return dedupe_key(message_id, ["a@example.com"])


async def _connections(redis_url: str) -> int:
    """Connections the tested client holds open, as the Redis server lists them."""
    observer = Redis.from_url(redis_url)
    try:
        clients = await observer.client_list()
    finally:
        await observer.aclose()
    return sum(1 for client in clients if client.get("name") == NAME)


async def test_concurrent_lookups_and_records_share_round_trips(redis_url: str) -> None:
    # Ten sessions finishing DATA at once must not cost ten round trips (and ten pooled
    # connections) each way: what arrives while one is under way goes in the next.
    redis = Redis.from_url(redis_url, client_name=NAME)
    shared = SharedMessageIds(redis, 60, "one")
    try:
        await asyncio.gather(
            *(shared.remember(key(f"<m{n}@warta.test>"), f"q{n}") for n in range(20))
        )
        found = await asyncio.gather(
            *(shared.seen(key(f"<m{n}@warta.test>")) for n in range(20)),
            shared.seen(key("<unknown@warta.test>")),
            shared.remember(key("<late@warta.test>"), "q99"),
        )
        assert found == [f"one/q{n}" for n in range(20)] + [None, None]
        assert await shared.seen(key("late@warta.test")) == "one/q99"  # brackets or not
        assert await shared.seen(dedupe_key("<late@warta.test>", ["b@example.com"])) is None
        ttl = await redis.ttl("warta:mta:mid:" + "0" * 64)
        assert ttl == -2  # nothing stored under a key that was never remembered
        assert 0 < max([await redis.ttl(key) async for key in redis.scan_iter("warta:mta:*")]) <= 60
        assert await _connections(redis_url) == 1
    finally:
        await redis.aclose()


async def test_a_bare_message_id_recorded_before_the_upgrade_is_found_when_asked(
    redis_url: str,
) -> None:
    # A version before `dedupe_key` recorded sha256(bare Message-ID). An instance that ran
    # it within the window looks those up too, in the same round trip.
    redis = Redis.from_url(redis_url)
    shared = SharedMessageIds(redis, 60, "new")
    try:
        bare = hashlib.sha256(b"before@warta.test").hexdigest()
        await redis.set(f"warta:mta:mid:{bare}", "old/q1", ex=60)
        assert await shared.seen(key("<before@warta.test>"), legacy=True) == "old/q1"
        assert await shared.seen(key("<before@warta.test>")) is None
        await shared.remember(key("<after@warta.test>"), "q2")
        assert await shared.seen(key("<after@warta.test>"), legacy=True) == "new/q2"
        assert await shared.seen(key("<other@warta.test>"), legacy=True) is None
    finally:
        await redis.aclose()


async def test_a_cancelled_caller_leaves_the_others_answered(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    shared = SharedMessageIds(redis, 60, "one")
    try:
        await shared.remember(key("<kept@warta.test>"), "q1")
        lookups = [asyncio.create_task(shared.seen(key("<kept@warta.test>"))) for _ in range(5)]
        await asyncio.sleep(0)  # all five queued, one round trip under way or next
        lookups[0].cancel()
        results = await asyncio.gather(*lookups[1:])
        assert results == ["one/q1"] * 4
        assert lookups[0].cancelled()
    finally:
        await redis.aclose()


async def test_redis_unreachable_degrades_to_not_seen() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    redis = Redis.from_url(f"redis://127.0.0.1:{port}", socket_connect_timeout=1)
    shared = SharedMessageIds(redis, 60, "one")
    try:
        results = await asyncio.gather(
            shared.seen(key("<a@warta.test>")),
            shared.remember(key("<b@warta.test>"), "q1"),
            shared.seen(key("<c@warta.test>")),
        )
        assert list(results) == [None, None, None]
    finally:
        await redis.aclose()


async def test_an_acceptance_is_shared_even_if_its_session_is_cancelled(redis_url: str) -> None:
    # The 250 may never be written (the client hung up), but the spool has the message:
    # its Message-ID must reach the other instances all the same.
    redis = Redis.from_url(redis_url)
    shared = SharedMessageIds(redis, 60, "mta-1")
    try:
        waiting = asyncio.create_task(shared.remember(key("<gone@warta.test>"), "q1"))
        await asyncio.sleep(0)  # queued in the batch
        waiting.cancel()

        async def recorded() -> bool:
            return await shared.seen(key("gone@warta.test")) == "mta-1/q1"

        await eventually(recorded, within=5, what="the cancelled session's Message-ID shared")
    finally:
        await redis.aclose()
