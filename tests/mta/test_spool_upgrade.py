"""A spool written by an older version (layout 1: envelope and message in two files) is
recovered and delivered after an upgrade, and its files go when its messages do."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from tests.helpers.api import eventually
from tests.helpers.sinks import SinkHandler
from workers.mta.delivery import DeliveryAgent
from workers.mta.message_id_log import envelope_key
from workers.mta.routing import Router, parse_host_port
from workers.mta.shaping import Shaping
from workers.mta.spool import Envelope, QueueId, RecipientStatus, Spool, new_queue_id
from workers.mta.transports import SmtpTransport


def _message(n: int) -> bytes:
    return (
        f"From: news@example.com\r\nTo: r{n}@example.com\r\nSubject: queued before {n}\r\n"
        f"Message-ID: <old-{n}@warta.example>\r\n\r\nHello {n}\r\n"
    ).encode()


def _layout_1(spool: Path, count: int) -> list[Envelope]:
    """Write `count` queued messages as the version before wrote them: two files each."""
    (spool / "msg").mkdir(parents=True)
    (spool / "env").mkdir()
    envelopes = []
    for n in range(count):
        envelope = Envelope(
            "news@example.com",
            [f"r{n}@example.com", f"done{n}@example.com"],
            message_id=f"<old-{n}@warta.example>",
            queue_id=new_queue_id(),
            received_at=time.time() - 60 + n,
            next_attempt_at=time.time() - 60 + n,
        )
        # Half delivered before the upgrade: that recipient must not get it twice.
        envelope.states[f"done{n}@example.com"].status = RecipientStatus.DELIVERED
        (spool / "msg" / f"{envelope.queue_id}.eml").write_bytes(_message(n))
        (spool / "env" / f"{envelope.queue_id}.json").write_bytes(envelope.to_json())
        envelopes.append(envelope)
    return envelopes


def test_recovery_reads_layout_1_beside_layout_2(tmp_path: Path) -> None:
    [old] = _layout_1(tmp_path, 1)
    # Layout 1's leftovers of a crash: a message never acknowledged, an envelope alone.
    (tmp_path / "msg" / "0000000000000001deadbeef.eml").write_bytes(b"Subject: torn\r\n")
    (tmp_path / "env" / "0000000000000002deadbeef.json").write_bytes(old.to_json())

    spool = Spool(tmp_path)
    [recovered] = spool.recover()

    assert recovered == old
    assert spool.load(old.queue_id) == _message(0)
    assert not (tmp_path / "msg" / "0000000000000001deadbeef.eml").exists()
    assert [p.name for p in (tmp_path / "corrupt").iterdir()] == ["0000000000000002deadbeef.json"]


async def test_a_layout_1_message_changes_and_leaves_like_any_other(tmp_path: Path) -> None:
    [old] = _layout_1(tmp_path, 1)
    async with Spool(tmp_path) as spool:
        [envelope] = spool.recover()
        new = await spool.accept(Envelope("a@example.com", ["b@example.com"]), b"Subject: new\r\n")
        assert sorted(await spool.queued()) == sorted([old.queue_id, new])
        envelope.states["r0@example.com"].attempts = 1
        await spool.update(envelope)
        assert await spool.read_envelope(old.queue_id) == envelope
        assert spool.load(old.queue_id) == _message(0)
        await spool.remove(old.queue_id)
        await spool.remove(new)
    assert list((tmp_path / "msg").iterdir()) == list((tmp_path / "env").iterdir()) == []


async def test_an_upgraded_spool_delivers_what_was_queued_once(
    tmp_path: Path, remote: tuple[str, SinkHandler], caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    old = _layout_1(directory, 5)
    spool = Spool(directory)
    agent = DeliveryAgent(
        spool,
        Router(transport_map={"example.com": parse_host_port(remote[0], 25)}),
        Shaping(),
        {"smtp": SmtpTransport(hostname="mta.example.com", tls="none")},
    )
    with caplog.at_level(logging.WARNING, logger="workers.mta"):
        agent.start()
        try:
            # Mail accepted after the upgrade goes out beside it.
            await spool.accept(Envelope("news@example.com", ["new@example.com"]), _message(9))

            async def all_delivered() -> bool:
                return len(remote[1].snapshot()) == 6

            await eventually(all_delivered, within=20, what="the old queue delivered")

            async def emptied() -> bool:
                return await spool.queued() == []

            await eventually(emptied, within=10, what="the spool emptied")
        finally:
            await agent.drain(grace=5)
            await spool.close()
    received = {item.rcpt_tos: item for item in remote[1].snapshot()}
    assert set(received) == {(f"r{n}@example.com",) for n in range(5)} | {("new@example.com",)}
    for n in range(5):
        assert received[(f"r{n}@example.com",)].message["Subject"] == f"queued before {n}"
        assert received[(f"r{n}@example.com",)].data.endswith(f"Hello {n}\r\n".encode())
    assert list((directory / "msg").iterdir()) == list((directory / "env").iterdir()) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    restarted = Spool(directory)
    assert restarted.recover() == []
    for envelope in old:
        key = envelope_key(envelope)
        assert key is not None
        assert await restarted.seen(key) == QueueId(envelope.queue_id)
