"""The delivery agent: takes spooled messages when they are due, routes each recipient
domain, paces each destination, signs, hands the message to a transport, and records what
happened — for every recipient, on disk and (through an outcome sink) in the send ledger.

A delivery reads as named steps: `_deliver` → `_deliver_domain` (route, shape, sign,
transport) → `_settle` (remove, retry later, or expire).

The agent hears of each message from the spool's committer (not from the SMTP session,
which may be gone by then), and sweeps the spool every `sweep_interval` seconds for
messages it does not hold: a safety net, so that no bug can strand a queued message.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.mail.dkim import DkimSigner, signing_domain
from app.mail.result import Outcome, SendResult
from workers.mta.dsn import Failure, build_dsn
from workers.mta.routing import Route, Router, RouteSource, destination_key
from workers.mta.shaping import Shaping, expired, next_retry_delay
from workers.mta.signing import SigningHelper
from workers.mta.spool import Envelope, MisfiledMessage, QueueId, RecipientStatus, Spool
from workers.mta.transports import Transport
from workers.mta.unreachable import UnreachableDestinations

DEFAULT_SWEEP_INTERVAL = 30.0
"""Seconds between sweeps of the spool for messages the agent does not hold."""
DEFAULT_MAX_HELD = 10_000
"""Messages due soon that the agent schedules in memory at most (Postfix's active queue
limit): the rest wait on disk and are read back by the sweep as the schedule drains, so a
backlog of a million messages does not hold a million envelopes (~800 bytes each) in
memory. Messages deferred for later do not count: fresh mail must not wait behind them."""

IDLE_LOOK = 1.0
"""Seconds at most between two looks at the schedule by an idle delivery worker."""

logger = logging.getLogger(__name__)

SHAPED_SOURCES = frozenset({RouteSource.MX, RouteSource.IMPLICIT_MX})
OutcomeSink = Callable[[str, str, str, str], Awaitable[None]]
"""(envelope sender, recipient, outcome, reply): what became of one recipient."""
"""(envelope, recipient, outcome: delivered | deferred | failed, reply) → recorded."""


@dataclass(frozen=True)
class RetryPolicy:
    """Postfix-like: first retry after `minimum`, doubling, capped, failing after `lifetime`."""

    minimum: float = 300
    maximum: float = 4000
    lifetime: float = 432_000


@dataclass
class AgentStats:
    """Counters for metrics."""

    delivered: int = 0
    deferred: int = 0
    failed: int = 0


class DeliveryAgent:
    """Delivers the spool's messages with `concurrency` deliveries in flight."""

    def __init__(
        self,
        spool: Spool,
        router: Router,
        shaping: Shaping,
        transports: dict[str, Transport],
        *,
        signer: DkimSigner | None = None,
        signing: SigningHelper | None = None,
        outcomes: OutcomeSink | None = None,
        retry: RetryPolicy = RetryPolicy(),
        concurrency: int = 50,
        clock: Callable[[], float] = time.time,
        hostname: str = "localhost",
        wants_dsn: Callable[[str], bool] = bool,
        sweep_interval: float = DEFAULT_SWEEP_INTERVAL,
        urgent: Callable[[str], bool] = lambda sender: False,
        max_held: int = DEFAULT_MAX_HELD,
    ) -> None:
        self.spool = spool
        self.router = router
        self.shaping = shaping
        self.transports = transports
        self.signer = signer
        # The keys' step of each signature in a helper process (None: in this loop).
        self.signing = signing
        self.outcomes = outcomes
        self.retry = retry
        self.concurrency = concurrency
        self.clock = clock
        self.hostname = hostname
        # Mail with a ledger row reports there; other mail (relayed) gets a DSN. Never
        # for the null sender: a bounce of a bounce would loop.
        self.wants_dsn = wants_dsn
        self.sweep_interval = sweep_interval
        # Mail that must not wait behind bulk mail (a transactional message behind a
        # million-recipient campaign): its own schedule, looked at first.
        self.urgent = urgent
        self.max_held = max_held
        # Committed messages were left on disk because the schedule was full: the sweep
        # reads them back (early, through `_refill`, once the schedule is half empty).
        self._spilled = False
        self._refill = asyncio.Event()
        self.stats = AgentStats()
        self._due: list[tuple[float, str, Envelope]] = []
        self._express: list[tuple[float, str, Envelope]] = []
        # What the agent holds: queue ids in `_due`, and those being delivered right now.
        self._scheduled: set[str] = set()
        self._later: set[str] = set()  # of those, the ones deferred beyond a sweep interval
        self._in_flight: set[str] = set()
        # Delivery workers with nothing due, each waiting on its own future: a message
        # scheduled wakes one of them. One event for all woke every idle worker for every
        # message, and all but one went back to sleep: with deliveries failing (nothing to
        # keep the workers busy) that was 16 % of the MTA's CPU in the acceptance benchmark.
        self._idle: deque[asyncio.Future[None]] = deque()
        self._stopping = False
        self._workers: list[asyncio.Task[None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._drops: dict[str, tuple[bool, str]] = {}
        self.unreachable = UnreachableDestinations()
        spool.add_listener(self.schedule)

    def schedule(self, envelope: Envelope) -> None:
        """Queue an envelope for delivery at its `next_attempt_at`, unless already held.

        The spool calls it for every commit; a message the agent already holds (scheduled
        or being delivered) is left as it is, so a second call never delivers it twice.
        """
        if self.holds(envelope.queue_id):
            return
        if self._soon() >= self.max_held:
            self._spilled = True  # durable on disk: the sweep schedules it when there is room
            return
        self._push(envelope)

    def _soon(self) -> int:
        """Messages scheduled that were due within a sweep interval when scheduled."""
        return len(self._scheduled) - len(self._later)

    def holds(self, queue_id: str) -> bool:
        """Whether the message is in the schedule or being delivered."""
        return queue_id in self._scheduled or queue_id in self._in_flight

    def _push(self, envelope: Envelope) -> None:
        if envelope.queue_id in self._drops:  # asked for while it was in flight: do it now
            envelope.next_attempt_at = self.clock()
        heap = self._express if self.urgent(envelope.mail_from) else self._due
        heapq.heappush(heap, (envelope.next_attempt_at, envelope.queue_id, envelope))
        self._scheduled.add(envelope.queue_id)
        if envelope.next_attempt_at > self.clock() + self.sweep_interval:
            self._later.add(envelope.queue_id)
        if envelope.next_attempt_at <= self.clock() + IDLE_LOOK:  # later: found by a look
            self._wake(1)

    def _wake(self, count: int | None) -> None:
        """Wake `count` idle delivery workers (every one with None) to look at the schedule."""
        while self._idle and (count is None or count > 0):
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if count is not None:
                    count -= 1

    def start(self) -> None:
        """Recover the spool, start the delivery workers and the sweeper."""
        for envelope in self.spool.recover():
            self.schedule(envelope)
        self._workers = [
            asyncio.create_task(self._work(), name=f"delivery-{n}") for n in range(self.concurrency)
        ]
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="delivery-sweep")

    async def sweep(self) -> int:
        """Schedule committed messages in the spool that the agent does not hold, oldest first.

        As many as the schedule has room for. Finding one is expected after the schedule
        was full (a backlog spilled to disk); otherwise it means a bug elsewhere stranded it
        (hence the warning). Returns how many it scheduled.
        """
        spilled, self._spilled = self._spilled, False
        room = self.max_held - self._soon()
        candidates = await self.spool.oldest_queued(room, self.holds)
        if spilled and len(candidates) >= room:
            self._spilled = True  # perhaps more on disk: the next refill reads on
        found = 0
        # Read in one hand-over to a thread: one each cost more CPU than the reading.
        wanted = [queue_id for queue_id in candidates if not self.holds(queue_id)]
        envelopes = await self.spool.read_envelopes(wanted)
        for queue_id, envelope in zip(wanted, envelopes, strict=True):
            if envelope is None or self.holds(queue_id):
                continue  # removed, unreadable (logged), or scheduled while it was read
            if not spilled:
                logger.warning(
                    "spool sweep: %s was queued but not scheduled for delivery; scheduling it now",
                    queue_id,
                )
            self._push(envelope)
            found += 1
        return found

    async def _sweep_forever(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refill.wait(), self.sweep_interval)
            self._refill.clear()
            try:
                await self.sweep()
            except Exception:  # the safety net must outlive a failing disk read
                logger.exception("spool sweep failed")

    async def drain(self, grace: float = 30.0) -> None:
        """Stop taking messages, let deliveries in flight finish (within `grace`)."""
        self._stopping = True
        self._wake(None)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        _, pending = await asyncio.wait(self._workers, timeout=grace) if self._workers else ((), ())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for transport in self.transports.values():
            await transport.aclose()

    def queued(self) -> int:
        """Messages waiting in this agent's schedule."""
        return len(self._due) + len(self._express)

    def pending_envelopes(self) -> list[tuple[float, str, Envelope]]:
        """A copy of the schedule, for status snapshots."""
        return self._express + self._due

    def flush(self, domain: str | None = None) -> int:
        """Make waiting messages (for `domain`, or all) due now, like `postqueue -f`."""
        now = self.clock()
        flushed = 0
        for heap in (self._express, self._due):
            entries = []
            for _, queue_id, envelope in heap:
                concerned = domain is None or any(
                    r.rpartition("@")[2].lower() == domain.lower() for r in envelope.pending()
                )
                if concerned:
                    envelope.next_attempt_at = now
                    flushed += 1
                entries.append((envelope.next_attempt_at, queue_id, envelope))
            heapq.heapify(entries)
            heap[:] = entries
        self._wake(None)
        return flushed

    async def drop(self, queue_id: QueueId, *, bounce: bool, reason: str) -> bool:
        """Remove a message; with `bounce`, its pending recipients fail (and get a DSN).

        A message being delivered right now is dropped as soon as that attempt ends.
        Returns whether this instance holds the message.
        """
        for heap in (self._express, self._due):
            found = self._take(heap, queue_id)
            if found is not None:
                envelope = found
                self._scheduled.discard(queue_id)
                self._later.discard(queue_id)
                self._in_flight.add(queue_id)  # held until removed: the sweep must not see it
                try:
                    await self._drop(envelope, bounce=bounce, reason=reason)
                finally:
                    self._in_flight.discard(queue_id)
                return True
        if self.spool.envelope_path(queue_id).exists():
            self._drops[queue_id] = (bounce, reason)
            return True
        return False

    @staticmethod
    def _take(heap: list[tuple[float, str, Envelope]], queue_id: str) -> Envelope | None:
        for index, (_, candidate, envelope) in enumerate(heap):
            if candidate == queue_id:
                del heap[index]
                heapq.heapify(heap)
                return envelope
        return None

    async def _drop(self, envelope: Envelope, *, bounce: bool, reason: str) -> None:
        failures = []
        for recipient in envelope.pending():
            await self._fail(envelope, recipient, reason, "failed" if bounce else "deleted")
            failures.append(Failure(recipient, f"550 5.0.0 {reason}"))
        queue_id = QueueId(envelope.queue_id)
        if bounce and failures and self.wants_dsn(envelope.mail_from):
            await self._notify(envelope, failures, self.spool.load(queue_id))
        await self.spool.remove(queue_id)

    async def _work(self) -> None:
        while not self._stopping:
            envelope = await self._next()
            if envelope is None:
                continue
            try:
                await self._attempt(envelope)
            finally:
                self._in_flight.discard(envelope.queue_id)

    async def _attempt(self, envelope: Envelope) -> None:
        if envelope.queue_id in self._drops:
            bounce, reason = self._drops.pop(envelope.queue_id)
            await self._drop(envelope, bounce=bounce, reason=reason)
            return
        try:
            await self._deliver(envelope)
        except MisfiledMessage:
            return  # its files held another message's: quarantined (and logged) by the spool
        except Exception:  # a bug must defer one message, never stop the agent
            logger.exception("delivery of %s failed unexpectedly", envelope.queue_id)
            envelope.next_attempt_at = self.clock() + self.retry.minimum
            await self.spool.update(envelope)
            self._push(envelope)

    async def _next(self) -> Envelope | None:
        now = self.clock()
        for heap in (self._express, self._due):
            if heap and heap[0][0] <= now:
                envelope = heapq.heappop(heap)[2]
                self._scheduled.discard(envelope.queue_id)
                self._later.discard(envelope.queue_id)
                self._in_flight.add(envelope.queue_id)
                if self._spilled and self._soon() <= self.max_held // 2:
                    self._refill.set()
                return envelope
        soonest = min((heap[0][0] for heap in (self._express, self._due) if heap), default=None)
        wait = min(soonest - now, IDLE_LOOK) if soonest is not None else IDLE_LOOK
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._idle.append(waiter)
        timer = loop.call_later(max(wait, 0.0), _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if not waiter.done():  # cancelled: the agent is stopping
                waiter.cancel()
            with contextlib.suppress(ValueError):  # woken: already taken off the list
                self._idle.remove(waiter)
        return None

    async def _deliver(self, envelope: Envelope) -> None:
        """One attempt for every pending recipient, grouped by domain, then settle; or back
        into the schedule, untried, while all of its destinations are held (unreachable)."""
        now = self.clock()
        if envelope.first_attempt_at is None:
            envelope.first_attempt_at = now
        if self.unreachable and not expired(envelope.first_attempt_at, now, self.retry.lifetime):
            held_until = await self._held_until(envelope, now)
            if held_until is not None:
                envelope.next_attempt_at = held_until  # in memory: a restart tries it at once
                self._push(envelope)
                return
        data = self.spool.load(QueueId(envelope.queue_id))
        if self.signer is not None:
            data = await self._sign(self.signer, data)
        by_domain: dict[str, list[str]] = defaultdict(list)
        for recipient in envelope.pending():
            by_domain[recipient.rpartition("@")[2].lower()].append(recipient)
        if len(by_domain) == 1:  # the usual case: no task per domain, no gather
            [(domain, rcpts)] = by_domain.items()
            outcomes = [await self._deliver_domain(envelope, domain, rcpts, data)]
        else:
            outcomes = await asyncio.gather(
                *(
                    self._deliver_domain(envelope, domain, rcpts, data)
                    for domain, rcpts in by_domain.items()
                )
            )
        failures = [failure for domain_failures in outcomes for failure in domain_failures]
        failures += await self._settle(envelope)
        if failures and self.wants_dsn(envelope.mail_from):
            await self._notify(envelope, failures, data)

    async def _held_until(self, envelope: Envelope, now: float) -> float | None:
        """The earliest end of the holds on the message's destinations, if all are held."""
        ends = []
        for domain in {recipient.rpartition("@")[2].lower() for recipient in envelope.pending()}:
            route = await self.router.route(domain)
            if route.failure is not None or not route.hops:
                return None
            until = self.unreachable.held_until(destination_key(route), now)
            if until is None:
                return None
            ends.append(until)
        return min(ends, default=None)

    async def _sign(self, signer: DkimSigner, data: bytes) -> bytes:
        """DKIM-sign for the From domain, unless a Warta worker already signed it with the
        same keys: then it is passed on as it is, at every attempt (see docs/mta.md, DKIM)."""
        domain = signing_domain(data)
        if signer.presigned(data, domain):
            return data
        if self.signing is None:
            return signer.sign(data, domain)
        fields = signer.unsigned(data, domain)
        signatures = [await self.signing.sign(f.key, f.data) for f in fields]
        return b"".join(f.complete(s) for f, s in zip(fields, signatures, strict=True)) + data

    async def _deliver_domain(
        self, envelope: Envelope, domain: str, recipients: list[str], data: bytes
    ) -> list[Failure]:
        route = await self.router.route(domain)
        if route.failure is not None:
            result = SendResult(
                route.failure.outcome, None, route.failure.status, route.failure.text
            )
            results = dict.fromkeys(recipients, result)
        else:
            results = await self._send(route, envelope.mail_from, recipients, data)
        failures = []
        for recipient, result in results.items():
            await self._record(envelope, recipient, result)
            if result.outcome is Outcome.PERMANENT:
                failures.append(Failure(recipient, result.describe()))
        return failures

    async def _send(
        self, route: Route, mail_from: str, recipients: list[str], data: bytes
    ) -> dict[str, SendResult]:
        """Wait for the destination's pace, send, and let its replies steer its rate."""
        # Pacing protects our reputation at mailbox providers: it applies to MX destinations.
        # A relay or transport-map next hop is ours or our provider's and paces itself.
        shaper = (
            self.shaping.for_destination(destination_key(route))
            if route.source in SHAPED_SOURCES
            else None
        )
        while shaper is not None:
            now = self.clock()
            if shaper.try_send(now=now):
                break
            await asyncio.sleep(min(max(shaper.next_send_at(now) - now, 0.01), 1.0))
        transport = self.transports["capture" if not route.hops else "smtp"]
        if shaper is None:
            results = await transport.deliver(route, mail_from, recipients, data)
        else:
            with shaper.transaction() as limits:
                results = await transport.deliver(route, mail_from, recipients, data, limits)
            for result in results.values():
                shaper.on_reply(result.code or 0, result.enhanced_status, result.text)
        if route.hops:
            self.unreachable.record(destination_key(route), results.values(), self.clock())
        return results

    async def _record(self, envelope: Envelope, recipient: str, result: SendResult) -> None:
        state = envelope.states[recipient]
        state.attempts += 1
        state.last_reply = result.describe()
        if result.outcome is Outcome.DELIVERED:
            state.status = RecipientStatus.DELIVERED
            self.stats.delivered += 1
            await self._report(envelope, recipient, "delivered", state.last_reply)
        elif result.outcome is Outcome.PERMANENT:
            await self._fail(envelope, recipient, state.last_reply)
        else:
            self.stats.deferred += 1
            await self._report(envelope, recipient, "deferred", state.last_reply)

    async def _fail(
        self, envelope: Envelope, recipient: str, reply: str, outcome: str = "failed"
    ) -> None:
        """Give up on one recipient: a permanent reply, expiry, or an operator's decision."""
        state = envelope.states[recipient]
        state.status = RecipientStatus.FAILED
        state.last_reply = reply
        if outcome == "failed":
            self.stats.failed += 1
        await self._report(envelope, recipient, outcome, reply)

    async def _settle(self, envelope: Envelope) -> list[Failure]:
        """Remove a finished message; retry later; fail what outlived the queue lifetime."""
        now = self.clock()
        pending = envelope.pending()
        first = envelope.first_attempt_at or now
        failures = []
        if pending and expired(first, now, self.retry.lifetime):
            for recipient in pending:
                last = envelope.states[recipient].last_reply
                reply = f"expired after {self.retry.lifetime:.0f} s; last reply: {last}"
                await self._fail(envelope, recipient, reply)
                failures.append(Failure(recipient, reply, expired=True))
            pending = []
        if not pending:
            await self.spool.remove(QueueId(envelope.queue_id))
            return failures
        attempt = max(envelope.states[r].attempts for r in pending)
        envelope.next_attempt_at = now + next_retry_delay(
            attempt, minimum=self.retry.minimum, maximum=self.retry.maximum
        )
        await self.spool.update(envelope)
        self._push(envelope)
        return failures

    async def _notify(self, envelope: Envelope, failures: list[Failure], original: bytes) -> None:
        """Queue an RFC 3464 DSN to the envelope sender, with a null return path."""
        message_id, dsn = build_dsn(
            hostname=self.hostname,
            original_sender=envelope.mail_from,
            failures=failures,
            original=original,
            received_at=envelope.received_at,
        )
        notice = Envelope(mail_from="", recipients=[envelope.mail_from], message_id=message_id)
        await self.spool.accept(notice, dsn)  # its commit schedules it (see `schedule`)

    async def _report(self, envelope: Envelope, recipient: str, outcome: str, reply: str) -> None:
        if self.outcomes is not None:
            try:
                await self.outcomes(envelope.mail_from, recipient, outcome, reply)
            except Exception:  # the ledger may lag; delivery must not stop for it
                logger.exception("could not record %s for %s", outcome, recipient)


def _release(waiter: asyncio.Future[None]) -> None:
    """An idle delivery worker's wait is over (its timer ran out)."""
    if not waiter.done():
        waiter.set_result(None)
