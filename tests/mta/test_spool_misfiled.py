"""A spool file whose envelope names another queue id is quarantined, never delivered.

That is what a power loss would leave had a removed message's file been reused before its
removal was durable: the old queue id naming the next message's bytes.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from tests.helpers.api import eventually
from tests.helpers.sinks import SinkHandler
from workers.mta import spool_format
from workers.mta.delivery import DeliveryAgent
from workers.mta.routing import Router, parse_host_port
from workers.mta.shaping import Shaping
from workers.mta.spool import Envelope, MisfiledMessage, QueueId, Spool
from workers.mta.transports import SmtpTransport


def _message(n: int) -> bytes:
    return (
        f"From: news@example.com\r\nTo: r{n}@example.com\r\nSubject: {n}\r\n"
        f"Message-ID: <misfiled-{n}@warta.example>\r\n\r\nHello {n}\r\n"
    ).encode()


def _envelope(n: int, next_attempt_at: float = 0.0) -> Envelope:
    return Envelope("news@example.com", [f"r{n}@example.com"], next_attempt_at=next_attempt_at)


def _misfile(spool: Spool, queue_id: QueueId, other: QueueId) -> None:
    """Make the file of `queue_id` hold what the file of `other` holds."""
    shutil.copyfile(spool.message_path(other), spool.message_path(queue_id))


def _misfiled_errors(caplog: pytest.LogCaptureFixture, queue_id: str, other: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.ERROR
        and f"files of {queue_id} hold the envelope of {other}" in record.getMessage()
    ]


async def test_recovery_quarantines_a_message_file_holding_another_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Spool(tmp_path) as spool:
        spool.recover()
        misfiled = await spool.accept(_envelope(1), _message(1))
        other = await spool.accept(_envelope(2), _message(2))
    _misfile(spool, misfiled, other)

    recovered = Spool(tmp_path).recover()

    assert [e.queue_id for e in recovered] == [other]
    assert [p.name for p in (tmp_path / "corrupt").iterdir()] == [f"{misfiled}.eml"]
    assert _misfiled_errors(caplog, misfiled, other)


async def test_recovery_checks_the_message_file_behind_an_envelope_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Deferred too often to append: its envelope is in env/ and names it rightly, but its
    # message file holds another message's bytes.
    async with Spool(tmp_path) as spool:
        spool.recover()
        env = _envelope(1)
        misfiled = await spool.accept(env, _message(1))
        other = await spool.accept(_envelope(2), _message(2))
    spool.changed_envelope_path(misfiled).write_bytes(env.to_json())
    _misfile(spool, misfiled, other)

    recovered = Spool(tmp_path).recover()

    assert [e.queue_id for e in recovered] == [other]
    corrupt = sorted(p.name for p in (tmp_path / "corrupt").iterdir())
    assert corrupt == [f"{misfiled}.eml", f"{misfiled}.json"]
    assert _misfiled_errors(caplog, misfiled, other)


async def test_recovery_quarantines_an_envelope_file_holding_another_envelope(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Spool(tmp_path) as spool:
        spool.recover()
        misfiled = await spool.accept(_envelope(1), _message(1))
        other_envelope = _envelope(2)
        other = await spool.accept(other_envelope, _message(2))
    spool.changed_envelope_path(misfiled).write_bytes(other_envelope.to_json())

    recovered = Spool(tmp_path).recover()

    assert [e.queue_id for e in recovered] == [other]
    corrupt = sorted(p.name for p in (tmp_path / "corrupt").iterdir())
    assert corrupt == [f"{misfiled}.eml", f"{misfiled}.json"]
    assert _misfiled_errors(caplog, misfiled, other)


async def test_reading_a_misfiled_message_quarantines_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Spool(tmp_path) as spool:
        spool.recover()
        first, second, other = [await spool.accept(_envelope(n), _message(n)) for n in (1, 2, 3)]
        _misfile(spool, first, other)
        _misfile(spool, second, other)

        assert await spool.read_envelope(first) is None
        with pytest.raises(MisfiledMessage):
            spool.load(second)

        assert sorted(await spool.queued()) == [other]
        assert spool.load(other) == _message(3)
        corrupt = sorted(p.name for p in (tmp_path / "corrupt").iterdir())
        assert corrupt == sorted([f"{first}.eml", f"{second}.eml"])
        assert _misfiled_errors(caplog, first, other)
        assert _misfiled_errors(caplog, second, other)


async def test_a_queue_id_quoted_in_an_address_is_not_taken_for_the_envelope_s(
    tmp_path: Path,
) -> None:
    decoy = '"queue_id":"0000000000000000deadbeef"'
    async with Spool(tmp_path) as spool:
        spool.recover()
        env = Envelope(f"{decoy}@example.com", [f"{decoy}@example.com", "r@example.com"])
        queue_id = await spool.accept(env, _message(1))
        assert spool.load(queue_id) == _message(1)
        assert await spool.read_envelope(queue_id) == env
    assert Spool(tmp_path).recover() == [env]


async def test_a_first_line_written_otherwise_is_still_checked(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        spool.recover()
        misfiled = await spool.accept(_envelope(1), _message(1))
        other = _envelope(2)
        other.queue_id = QueueId("0000000000000000deadbeef")
        # The envelope as JSON with spaces after its colons: not byte for byte as Warta
        # writes it, so the queue id is found by parsing it.
        head = json.dumps(json.loads(other.to_json())).encode()
        line = spool_format.MARKER + b"%d " % len(_message(2)) + head
        spool.message_path(misfiled).write_bytes(line + b"\n" + _message(2))
        with pytest.raises(MisfiledMessage):
            spool.load(misfiled)
        assert [p.name for p in (tmp_path / "corrupt").iterdir()] == [f"{misfiled}.eml"]


def _agent(spool: Spool, remote: tuple[str, SinkHandler]) -> DeliveryAgent:
    return DeliveryAgent(
        spool,
        Router(transport_map={"example.com": parse_host_port(remote[0], 25)}),
        Shaping(),
        {"smtp": SmtpTransport(hostname="mta.example.com", tls="none")},
        concurrency=1,  # one at a time: the misfiled message is tried before the last one
    )


async def test_a_misfiled_message_found_on_start_is_not_delivered(
    tmp_path: Path, remote: tuple[str, SinkHandler], caplog: pytest.LogCaptureFixture
) -> None:
    async with Spool(tmp_path) as spool:
        spool.recover()
        misfiled = await spool.accept(_envelope(1), _message(1))
        other = await spool.accept(_envelope(2), _message(2))
    _misfile(spool, misfiled, other)
    spool = Spool(tmp_path)
    agent = _agent(spool, remote)
    agent.start()
    try:

        async def delivered() -> bool:
            return bool(remote[1].snapshot()) and not any(spool.messages.iterdir())

        await eventually(delivered, within=10, what="the other message delivered")
    finally:
        await agent.drain(grace=5)
        await spool.close()
    [received] = remote[1].snapshot()
    assert received.rcpt_tos == ("r2@example.com",)
    assert received.data.replace(b"\r\n", b"\n") == _message(2).replace(b"\r\n", b"\n")
    assert [p.name for p in (tmp_path / "corrupt").iterdir()] == [f"{misfiled}.eml"]
    assert _misfiled_errors(caplog, misfiled, other)


async def test_a_message_misfiled_while_queued_is_not_delivered(
    tmp_path: Path, remote: tuple[str, SinkHandler], caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    agent = _agent(spool, remote)
    agent.start()
    try:
        later = agent.clock() + 3600
        misfiled = await spool.accept(_envelope(1, next_attempt_at=later), _message(1))
        other = await spool.accept(_envelope(2, next_attempt_at=later), _message(2))
        assert agent.holds(misfiled)
        _misfile(spool, misfiled, other)
        assert agent.flush() == 2

        async def settled() -> bool:
            return [p.name for p in spool.messages.iterdir()] == [] and not agent.holds(misfiled)

        await eventually(settled, within=10, what="both messages settled")
    finally:
        await agent.drain(grace=5)
        await spool.close()
    assert [item.rcpt_tos for item in remote[1].snapshot()] == [("r2@example.com",)]
    assert [p.name for p in (tmp_path / "corrupt").iterdir()] == [f"{misfiled}.eml"]
    assert _misfiled_errors(caplog, misfiled, other)
    # Quarantined, not a delivery that failed and is tried again.
    assert not [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
