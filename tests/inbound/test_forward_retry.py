"""A forward that fails is tried again with a doubling wait, by the reply processor's own
loop, until it goes out or its tries are used up; the reply is stored either way. A reply is
forwarded once: a process that died before its forward went out is covered by the retry
pass, a long pass holds its claims for the full lease, and a repeated forward carries the
same Message-ID, so the MTA drops the repeat."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audience.subscribers import add_confirmed
from app.core.resolver import make_resolver
from app.core.settings import Settings
from app.inbound.authentication import Authenticator
from app.inbound.processor import FORWARD_LEASE, Forwarding, ReplyProcessor
from app.inbound.scanning import DaemonScanner
from app.inbound.service import Policy
from app.mail.reply_address import ReplyTarget, reply_address
from app.models import Campaign, InboundMessage, MailingList, utcnow
from tests.helpers.api import eventually
from tests.helpers.daemons import ZoneDns
from tests.helpers.servers import free_port
from tests.helpers.sinks import SinkHandler
from workers.mta.inbound import InboundStore
from workers.mta.service import MtaService

Sessions = async_sessionmaker[AsyncSession]


@dataclass
class Clock:
    """The processor's clock as the test sets it (None: the real time)."""

    at: datetime | None = None

    def __call__(self) -> datetime:
        return self.at or utcnow()


@dataclass
class HeldSink(SinkHandler):
    """A submission listener that holds the first message's DATA until `release` is set: a
    forward in flight. Later messages are taken at once."""

    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not self.arrived.is_set():
            self.arrived.set()
            await asyncio.to_thread(self.release.wait, 60)
        return await super().handle_DATA(server, session, envelope)


async def _reply_to_a_forwarding_campaign(
    settings: Settings, sessions: Sessions, tmp: Path, replies: int = 1
) -> None:
    async with sessions() as session:
        readers = MailingList(name="readers")
        campaign = Campaign(
            name="news", subject="News", from_email="news@example.com",
            track_replies=True, reply_forward_to="desk@example.com",
        )  # fmt: skip
        session.add_all([readers, campaign])
        await session.flush()
        [reader] = await add_confirmed(session, readers.id, [("r@reader.example", "", {})])
        await session.commit()
    target = ReplyTarget(campaign_id=campaign.id, subscriber_id=reader)
    address = reply_address(settings.effective_secret_key(), "reply.example", target)
    store = InboundStore(tmp / "inbound", replies=tmp / "replies", reply_domain="reply.example")
    for number in range(replies):
        data = (
            f"From: Reader <r@reader.example>\r\nTo: {address}\r\nSubject: Re: News\r\n\r\n"
            f"Thanks, see you on Tuesday. ({number})\r\n"
        ).encode()
        await store.store("r@reader.example", [address], data, client_ip="127.0.0.1")


def _processor(
    settings: Settings, sessions: Sessions, dns: ZoneDns, tmp: Path, forwarding: Forwarding
) -> ReplyProcessor:
    return ReplyProcessor(
        tmp / "replies",
        sessions,
        Policy.from_settings(settings),
        Authenticator(make_resolver([("127.0.0.1", dns.port)], 3.0)),
        DaemonScanner.from_settings(settings),
        reports=tmp / "inbound",
        forwarding=forwarding,
    )


async def _row(sessions: Sessions) -> InboundMessage:
    async with sessions() as session:
        return (await session.scalars(sa.select(InboundMessage))).one()


def _forward_id(row: InboundMessage, domain: str) -> str:
    """The Message-ID every try of the row's forward carries (the digest of the stored reply
    keeps an id a restored database hands out again apart)."""
    return f"<fwd-{row.id}.{hashlib.sha256(row.raw).hexdigest()[:16]}@{domain}>"


async def _rows(sessions: Sessions) -> list[InboundMessage]:
    async with sessions() as session:
        return list(await session.scalars(sa.select(InboundMessage).order_by(InboundMessage.id)))


async def test_a_failed_forward_goes_out_when_the_submission_listener_is_back(
    settings: Settings, sessionmaker: Sessions, dns: ZoneDns, tmp_path: Path
) -> None:
    port = free_port()  # the MTA's submission listener, down for now
    forwarding = Forwarding(f"127.0.0.1:{port}", "reply.example", attempts=4, retry=60.0)
    processor = _processor(settings, sessionmaker, dns, tmp_path, forwarding)
    await _reply_to_a_forwarding_campaign(settings, sessionmaker, tmp_path)

    assert await processor.process_all() == 1
    failed = await _row(sessionmaker)
    assert (failed.forwarded_to, failed.forward_attempts) == ("", 1)
    assert failed.forward_retry_at is not None
    first_retry = failed.forward_retry_at
    assert first_retry - failed.received_at >= timedelta(seconds=59)

    sink = SinkHandler()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        assert await processor.retry_forwards(now=first_retry - timedelta(seconds=1)) == 0
        assert sink.snapshot() == []  # not due yet
        assert await processor.retry_forwards(now=first_retry) == 1
    finally:
        controller.stop()

    [forward] = sink.snapshot()
    assert forward.rcpt_tos == ("desk@example.com",) and forward.mail_from == "<>"
    assert b"see you on Tuesday" in forward.data
    done = await _row(sessionmaker)
    assert (done.forwarded_to, done.forward_retry_at) == ("desk@example.com", None)
    assert await processor.retry_forwards(now=first_retry + timedelta(days=1)) == 0


async def test_a_forward_is_given_up_after_its_tries_with_a_doubling_wait(
    settings: Settings, sessionmaker: Sessions, dns: ZoneDns, tmp_path: Path
) -> None:
    forwarding = Forwarding(f"127.0.0.1:{free_port()}", "reply.example", attempts=3, retry=10.0)
    processor = _processor(settings, sessionmaker, dns, tmp_path, forwarding)
    await _reply_to_a_forwarding_campaign(settings, sessionmaker, tmp_path)
    assert await processor.process_all() == 1

    waits = []
    clock = Clock()
    processor.clock = clock
    for _ in range(2):
        row = await _row(sessionmaker)
        assert row.forward_retry_at is not None
        due = clock.at = row.forward_retry_at
        assert await processor.retry_forwards(now=due) == 0
        after = await _row(sessionmaker)
        if after.forward_retry_at is not None:
            waits.append(after.forward_retry_at - due)

    given_up = await _row(sessionmaker)
    assert (given_up.forward_attempts, given_up.forward_retry_at) == (3, None)
    assert given_up.forwarded_to == ""
    # The first retry came 10 s after the first try, the second 20 s after the first retry.
    assert waits == [timedelta(seconds=20)]
    assert await processor.retry_forwards(now=due + timedelta(days=1)) == 0


async def test_the_running_processor_retries_by_itself(
    settings: Settings, sessionmaker: Sessions, dns: ZoneDns, tmp_path: Path
) -> None:
    port = free_port()
    forwarding = Forwarding(f"127.0.0.1:{port}", "reply.example", attempts=20, retry=0.1)
    processor = _processor(settings, sessionmaker, dns, tmp_path, forwarding)
    processor.poll_interval = 0.05
    await _reply_to_a_forwarding_campaign(settings, sessionmaker, tmp_path)
    processor.start()
    sink = SinkHandler()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    try:

        async def failed_once() -> bool:
            row = await _row(sessionmaker) if await _stored(sessionmaker) else None
            return row is not None and row.forward_attempts >= 1

        await eventually(failed_once, what="the first forward failed")
        controller.start()

        async def forwarded() -> bool:
            return (await _row(sessionmaker)).forwarded_to == "desk@example.com"

        await eventually(forwarded, within=30, what="the forward retried and sent")
    finally:
        await processor.stop()
        controller.stop()
    assert len(sink.snapshot()) == 1


async def _stored(sessions: Sessions) -> int:
    async with sessions() as session:
        return int(await session.scalar(sa.select(sa.func.count(InboundMessage.id))) or 0)


async def test_a_repeated_forward_reaches_the_mta_once(
    mta: MtaService,
    mta_settings: Settings,
    remote: tuple[str, SinkHandler],
    sessionmaker: Sessions,
    dns: ZoneDns,
    tmp_path: Path,
) -> None:
    """The forward went out but its mark was lost (a crash between the MTA's 250 and the
    commit): the retry sends it again, with the same Message-ID, which the MTA drops."""
    domain = mta_settings.reply_domain()
    forwarding = Forwarding(mta_settings.mta_submission, domain)
    processor = _processor(mta_settings, sessionmaker, dns, tmp_path, forwarding)
    await _reply_to_a_forwarding_campaign(mta_settings, sessionmaker, tmp_path)
    assert await processor.process_all() == 1
    row = await _row(sessionmaker)
    assert row.forwarded_to == "desk@example.com"

    async with sessionmaker() as session:
        await session.execute(
            sa.update(InboundMessage)
            .where(InboundMessage.id == row.id)
            .values(forwarded_to="", forward_retry_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    await processor.retry_forwards()  # or the MTA's own reply processor: either sends it

    async def forwarded_again() -> bool:
        return (await _row(sessionmaker)).forwarded_to == "desk@example.com"

    async def delivered() -> bool:
        return await mta.spool.queued() == [] and bool(remote[1].snapshot())

    await eventually(forwarded_again, what="the forward repeated")
    await eventually(delivered, what="the MTA's queue delivered to the remote MX")
    [forward] = remote[1].snapshot()
    assert forward.rcpt_tos == ("desk@example.com",)
    assert forward.message_id == _forward_id(row, domain)


async def test_replies_whose_process_died_before_their_forwards_went_out_are_forwarded(
    settings: Settings, sessionmaker: Sessions, dns: ZoneDns, tmp_path: Path
) -> None:
    """Two replies stored in one batch; the process dies during the first one's forward (stuck
    waiting for a listener that never greets), before the second was tried at all: once the
    lease has run out, the retry pass of a restarted process forwards both, once each."""
    connections: list[asyncio.StreamWriter] = []

    async def never_greets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    blackhole = await asyncio.start_server(never_greets, "127.0.0.1", 0)
    port = blackhole.sockets[0].getsockname()[1]
    dying = _processor(
        settings, sessionmaker, dns, tmp_path, Forwarding(f"127.0.0.1:{port}", "reply.example")
    )
    await _reply_to_a_forwarding_campaign(settings, sessionmaker, tmp_path, replies=2)
    dying.start()
    try:

        async def first_forward_in_hand() -> bool:
            return bool(connections)

        await eventually(first_forward_in_hand, what="the first forward connecting")
    finally:
        await dying.stop()  # the process dies with the first forward in hand
        for writer in connections:
            writer.close()
        blackhole.close()
        await blackhole.wait_closed()
    assert len(connections) == 1  # the second reply's forward was never tried
    stored = await _rows(sessionmaker)
    assert [(row.forwarded_to, row.forward_attempts) for row in stored] == [("", 0), ("", 0)]

    sink = SinkHandler()
    listener = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=listener)
    controller.start()
    try:
        restarted = _processor(
            settings, sessionmaker, dns, tmp_path,
            Forwarding(f"127.0.0.1:{listener}", "reply.example"),
        )  # fmt: skip
        lease_over = utcnow() + timedelta(seconds=FORWARD_LEASE + 1)
        assert await restarted.retry_forwards(now=lease_over) == 2
        assert await restarted.retry_forwards(now=lease_over + timedelta(days=1)) == 0
    finally:
        controller.stop()
    forwards = sink.snapshot()
    assert sorted(forward.message_id for forward in forwards) == sorted(
        _forward_id(row, "reply.example") for row in stored
    )
    assert [row.forwarded_to for row in await _rows(sessionmaker)] == ["desk@example.com"] * 2


async def test_a_long_pass_keeps_its_claim_for_the_whole_lease(
    settings: Settings, sessionmaker: Sessions, dns: ZoneDns, tmp_path: Path
) -> None:
    """A pass that began long ago (its earlier forwards were slow) claims a due row: the
    lease runs from the claim, so another process's pass cannot take the row while the
    first one's forward is still in flight."""
    sink = HeldSink()
    port = free_port()
    forwarding = Forwarding(f"127.0.0.1:{port}", "reply.example")
    first = _processor(settings, sessionmaker, dns, tmp_path, forwarding)
    second = _processor(settings, sessionmaker, dns, tmp_path, forwarding)
    await _reply_to_a_forwarding_campaign(settings, sessionmaker, tmp_path)
    assert await first.process_all() == 1  # the listener is down: the first try fails
    failed = await _row(sessionmaker)
    assert failed.forward_retry_at is not None
    pass_began = failed.forward_retry_at
    claimed_at = pass_began + timedelta(seconds=FORWARD_LEASE + 100)
    first.clock = Clock(claimed_at)
    second.clock = Clock(claimed_at)

    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        slow_pass = asyncio.create_task(first.retry_forwards(now=pass_began))
        await eventually(
            lambda: asyncio.to_thread(sink.arrived.is_set), what="the first forward in flight"
        )
        in_flight = await _row(sessionmaker)
        taken = await second.retry_forwards(now=claimed_at)
        sink.release.set()
        assert await slow_pass == 1
    finally:
        sink.release.set()
        controller.stop()
    assert taken == 0
    assert len(sink.snapshot()) == 1
    assert in_flight.forward_retry_at is not None
    assert in_flight.forward_retry_at == claimed_at + timedelta(seconds=FORWARD_LEASE)


@dataclass
class HeldRefusal(HeldSink):
    """Holds the first message's DATA, then refuses it: a try that fails late."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.arrived.set()
        await asyncio.to_thread(self.release.wait, 60)
        return "451 4.3.0 try again later"


async def test_a_try_that_outlived_its_lease_does_not_undo_the_take_over(
    settings: Settings, sessionmaker: Sessions, dns: ZoneDns, tmp_path: Path
) -> None:
    """The first process's try runs past its lease and fails; meanwhile a second process took
    the row over and forwarded it. The late failure is not recorded over that success (it
    would schedule the forward again)."""
    slow_sink, quick_sink = HeldRefusal(), SinkHandler()
    slow_port, quick_port = free_port(), free_port()
    first = _processor(
        settings, sessionmaker, dns, tmp_path, Forwarding(f"127.0.0.1:{slow_port}", "reply.example")
    )
    second = _processor(
        settings,
        sessionmaker,
        dns,
        tmp_path,
        Forwarding(f"127.0.0.1:{quick_port}", "reply.example"),
    )
    await _reply_to_a_forwarding_campaign(settings, sessionmaker, tmp_path)
    assert await first.process_all() == 1  # no listener yet: the first try fails
    due = (await _row(sessionmaker)).forward_retry_at
    assert due is not None
    first.clock = Clock(due)
    second.clock = Clock(due + timedelta(seconds=FORWARD_LEASE + 1))  # the lease ran out

    slow = Controller(slow_sink, hostname="127.0.0.1", port=slow_port)
    quick = Controller(quick_sink, hostname="127.0.0.1", port=quick_port)
    slow.start()
    quick.start()
    try:
        late = asyncio.create_task(first.retry_forwards(now=due))
        await eventually(
            lambda: asyncio.to_thread(slow_sink.arrived.is_set), what="the first try in flight"
        )
        assert await second.retry_forwards(now=second.clock()) == 1
        slow_sink.release.set()
        assert await late == 0
    finally:
        slow_sink.release.set()
        slow.stop()
        quick.stop()
    row = await _row(sessionmaker)
    assert len(quick_sink.snapshot()) == 1
    assert row.forwarded_to == "desk@example.com"
    assert row.forward_retry_at is None  # nothing owed: not scheduled again by the late failure
    assert row.forward_attempts == 1  # the failure before the listener came up, only


async def test_a_long_batch_does_not_forward_a_reply_another_process_took_over(
    settings: Settings, sessionmaker: Sessions, dns: ZoneDns, tmp_path: Path
) -> None:
    """Two replies stored in one batch; the first one's forward takes so long that the lease
    taken at the store runs out and another process's retry pass forwards the second: the
    storing process, claiming before its own try, leaves the second alone."""
    sink = HeldSink()
    port = free_port()
    forwarding = Forwarding(f"127.0.0.1:{port}", "reply.example")
    storing = _processor(settings, sessionmaker, dns, tmp_path, forwarding)
    other = _processor(settings, sessionmaker, dns, tmp_path, forwarding)
    await _reply_to_a_forwarding_campaign(settings, sessionmaker, tmp_path, replies=2)
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        batch = asyncio.create_task(storing.process_all())
        await eventually(
            lambda: asyncio.to_thread(sink.arrived.is_set), what="the first forward in flight"
        )
        first, second = await _rows(sessionmaker)
        assert second.forward_retry_at is not None
        stored_lease = second.forward_retry_at  # never claimed: the lease of the store
        taken = await other.retry_forwards(now=stored_lease)
        sink.release.set()
        assert await batch == 2
    finally:
        sink.release.set()
        controller.stop()
    forwards = sink.snapshot()
    assert sorted(forward.message_id for forward in forwards) == sorted(
        _forward_id(row, "reply.example") for row in (first, second)
    )
    assert taken == 1  # the second; the first was claimed afresh for its own try
    assert first.forward_retry_at is not None and first.forward_retry_at > stored_lease
