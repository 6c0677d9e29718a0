"""The reply processor on its own: shared Maildir, clamd down (held back or, fail-open,
stored unscanned), and genuine tokens naming rows that no longer exist."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.resolver import make_resolver
from app.core.settings import Settings
from app.inbound.authentication import Authenticator
from app.inbound.processor import ReplyProcessor
from app.inbound.scanning import DaemonScanner
from app.inbound.service import Policy
from app.mail.reply_address import ReplyTarget, reply_address
from app.models import Event, InboundMessage
from tests.helpers.daemons import ZoneDns
from tests.helpers.servers import free_port
from workers.mta.inbound import InboundStore

Sessions = async_sessionmaker[AsyncSession]


def _processor(settings: Settings, sessions: Sessions, dns: ZoneDns, tmp: Path) -> ReplyProcessor:
    return ReplyProcessor(
        tmp / "replies",
        sessions,
        Policy.from_settings(settings),
        Authenticator(make_resolver([("127.0.0.1", dns.port)], 3.0)),
        DaemonScanner.from_settings(settings),
        reports=tmp / "inbound",
    )


async def _store_replies(settings: Settings, tmp: Path, count: int, target: ReplyTarget) -> str:
    address = reply_address(settings.effective_secret_key(), "reply.example", target)
    store = InboundStore(tmp / "inbound", replies=tmp / "replies", reply_domain="reply.example")
    for n in range(count):
        data = (
            f"From: r{n}@reader.example\r\nTo: {address}\r\nSubject: n{n}\r\n\r\nhi {n}\r\n"
        ).encode()
        await store.store(f"r{n}@reader.example", [address], data, client_ip="127.0.0.1")
    return address


async def _stored(sessions: Sessions) -> list[InboundMessage]:
    async with sessions() as session:
        return list(await session.scalars(sa.select(InboundMessage).order_by(InboundMessage.id)))


async def test_two_processors_store_each_reply_once(
    settings: Settings, sessionmaker: Sessions, dns: ZoneDns, tmp_path: Path
) -> None:
    await _store_replies(settings, tmp_path, 150, ReplyTarget(message_id=1))
    first = _processor(settings, sessionmaker, dns, tmp_path)
    second = _processor(settings, sessionmaker, dns, tmp_path)
    counts = await asyncio.gather(first.process_all(), second.process_all())
    assert sum(counts) == 150
    rows = await _stored(sessionmaker)
    assert sorted(row.subject for row in rows) == sorted(f"n{n}" for n in range(150))
    # Message 1 does not exist: the token is genuine but names nothing any more.
    assert {(row.attribution, row.attributed, row.message_id) for row in rows} == {
        ("unknown", False, None)
    }
    assert list((tmp_path / "replies" / "cur").iterdir()) == []
    async with sessionmaker() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Event)) == 150


async def test_clamd_down_holds_replies_back_unless_fail_open(
    settings: Settings, sessionmaker: Sessions, dns: ZoneDns, tmp_path: Path
) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens: clamd is down
    await _store_replies(settings, tmp_path, 2, ReplyTarget(message_id=1))
    closed = settings.model_copy(update={"clamd": nobody, "clamd_timeout": 2})
    assert await _processor(closed, sessionmaker, dns, tmp_path).process_all() == 0
    assert await _stored(sessionmaker) == []
    held = list((tmp_path / "replies" / "cur").iterdir())
    assert len(held) == 2  # claimed, kept for a retry after the lease

    for path in held:  # the lease has passed
        path.rename(tmp_path / "replies" / "new" / path.name.split(",")[0])
    open_ = closed.model_copy(update={"clamd_fail_open": True})
    assert await _processor(open_, sessionmaker, dns, tmp_path).process_all() == 2
    assert [row.malware for row in await _stored(sessionmaker)] == [None, None]
