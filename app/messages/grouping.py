"""Group commit for POST /messages: the requests that arrive together share one transaction.

A request is prepared (validated, scanned, rendered) on its own, then waits for the next
group: one task stores the requests waiting at that moment in one transaction (one
suppression query, the ids from the sequence on PostgreSQL, one INSERT, one events INSERT,
one COMMIT) and hands their ids to the queue in one enqueue, while the requests that arrive
meanwhile gather for the group after it. Each request still answers 202 only once its rows
are committed and queued. Under load the per-request cost of the connection check-out, its
ping, BEGIN and COMMIT is shared by the group; alone, a request is a group of one.

A request with an Idempotency-Key joins a group too: the group's keys are claimed in its
transaction (one INSERT … ON CONFLICT DO NOTHING) and each answer is stored there with the
rows it names, so a key is answered exactly when its messages are committed. A key that has
a row already (used before, expired, or being claimed by a transaction under way) takes no
part: nothing of its request is stored, and the route settles it alone as without grouping
(replay, 422 for another body, 409 while in progress, or a new claim once expired). Two
requests with one key never share a group: the second waits for the next one.

If one of the group's statements fails (a message that cannot be built, a row the database
refuses), nothing was committed: each half of the group is stored again as a group, down to
single requests, one transaction at a time, so that one bad request fails alone, as without
grouping, and the search holds one connection, not one per request. An error that is the
database's rather than a request's (it is unreachable, the pool has no connection to give)
fails the whole group at once: every half would meet it again. If the COMMIT itself fails,
the group may or may not be stored (the server may have committed before the connection
dropped): storing it again could store every message twice, so every request of the group
fails with `StoreUnconfirmed`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.errors import DomainError
from app.core.settings import Settings
from app.mail.identity import SiteIdentity
from app.messages import idempotency, service
from app.messages.handoff import GroupEnqueuer
from app.messages.service import Prepared, Stored

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Waiting:
    """A prepared request waiting for its group."""

    api_key_id: int | None
    prepared: Prepared
    done: asyncio.Future[list[Stored] | None]
    claim: idempotency.Claim | None = None
    """Its Idempotency-Key, claimed in the group's transaction (None: it has none)."""


GROUP_MESSAGES = 1000
"""Messages one group stores at most (a group takes whole requests, at least one): keeps
each statement's parameters well under PostgreSQL's 32,767 and a transaction short."""


class DatabaseUnavailable(DomainError):
    """The database failed a group before its COMMIT for a reason of its own: nothing stored."""

    status = 503
    title = "Service unavailable"


class StoreUnconfirmed(DomainError):
    """The database did not confirm a group's COMMIT: its messages may or may not be stored."""

    status = 503
    title = "Service unavailable"


class GroupStore:
    """Stores prepared requests in groups; one per app and queue pool."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        site: SiteIdentity,
        enqueuer: GroupEnqueuer,
        group_messages: int = GROUP_MESSAGES,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.group_messages = group_messages
        self.settings = settings
        self.site = site
        self.enqueuer = enqueuer
        self._waiting: list[Waiting] = []
        self._storing: asyncio.Task[None] | None = None

    async def submit(self, api_key_id: int | None, prepared: Prepared) -> list[Stored]:
        """Store and enqueue one request's messages with whatever group it falls into."""
        rows = await self._join(Waiting(api_key_id, prepared, self._future()))
        assert rows is not None  # only a claim can be refused
        return rows

    async def submit_once(
        self, claim: idempotency.Claim, prepared: Prepared
    ) -> list[Stored] | None:
        """`submit` for a request with an Idempotency-Key: its key is claimed in the group's
        transaction and stored with the answer (`{"messages": …}`, 202). None if the key has
        a row already (an earlier or concurrent request, or an expired one): nothing of this
        request was stored, and `idempotency.claim` is to settle it alone."""
        return await self._join(Waiting(claim.api_key_id, prepared, self._future(), claim))

    @staticmethod
    def _future() -> asyncio.Future[list[Stored] | None]:
        return asyncio.get_running_loop().create_future()

    async def _join(self, waiting: Waiting) -> list[Stored] | None:
        self._waiting.append(waiting)
        if self._storing is None or self._storing.done():
            self._storing = asyncio.create_task(self._store_groups())
        # A request cancelled meanwhile (client gone) is stored all the same, as it would
        # have been past its own commit: the group does not depend on who still waits.
        return await asyncio.shield(waiting.done)

    async def drain(self) -> None:
        """Wait for the groups being stored (at shutdown): their requests may still be told
        their outcome, and nothing is cut off half way through its transaction."""
        if self._storing is not None:
            await asyncio.gather(self._storing, return_exceptions=True)

    async def _store_groups(self) -> None:
        while self._waiting:
            group = self._next_group()
            try:
                await self._store(group)
            except BaseException:  # cancelled (shutdown): nobody will store these
                for waiting in group + self._waiting:
                    waiting.done.cancel()
                raise

    def _next_group(self) -> list[Waiting]:
        """The requests waiting, in order, up to `group_messages` messages; a second request
        with the same Idempotency-Key waits for the next group, where it finds the first's
        answer (in one transaction it would find the key claimed but not answered)."""
        group: list[Waiting] = []
        later: list[Waiting] = []
        count = 0
        full = False
        keys: set[tuple[int, str]] = set()
        for waiting in self._waiting:
            key = None if waiting.claim is None else (waiting.claim.api_key_id, waiting.claim.key)
            size = len(waiting.prepared.recipients)
            full = full or (bool(group) and count + size > self.group_messages)
            if full or (key is not None and key in keys):
                later.append(waiting)
                continue
            group.append(waiting)
            count += size
            if key is not None:
                keys.add(key)
        self._waiting = later
        return group

    async def _store(self, group: list[Waiting]) -> None:
        """Store `group` in one transaction and enqueue it; on a request's error, by halves."""
        committing = False
        try:
            async with self.sessionmaker() as session:
                claims = [waiting.claim for waiting in group if waiting.claim is not None]
                claimed = await idempotency.claim_many(session, claims)
                taken = [w for w in group if w.claim is None or _key(w.claim) in claimed]
                stored = await service.store_many(
                    session, self.settings, self.site, [(w.api_key_id, w.prepared) for w in taken]
                )
                await idempotency.remember_many(
                    session,
                    [
                        (claimed[_key(w.claim)], 202, answer(rows))
                        for w, rows in zip(taken, stored, strict=True)
                        if w.claim is not None
                    ],
                )
                committing = True
                await session.commit()
        except Exception as exc:
            if committing:  # maybe committed: storing again could store every message twice
                logger.warning("COMMIT of %d requests unconfirmed", len(group), exc_info=exc)
                _fail_all(group, _unconfirmed(exc))
            elif _unavailable(exc):  # each half would meet it again (and wait for it again)
                logger.warning("%d requests not stored", len(group), exc_info=exc)
                _fail_all(group, _not_stored(exc))
            elif len(group) > 1:  # nothing committed: find the request that failed it
                middle = len(group) // 2
                await self._store(group[:middle])
                await self._store(group[middle:])
            else:
                _fail(group[0].done, exc)
            return
        for waiting in group:  # a key used before: nothing of it stored, settled alone
            if waiting.claim is not None and _key(waiting.claim) not in claimed:
                _settle(waiting.done, None)
        try:
            await self.enqueuer.enqueue([i for rows in stored for i in service.to_send(rows)])
        except Exception as exc:  # committed but not queued: each request hears it (500)
            _fail_all(taken, exc)
            return
        for waiting, rows in zip(taken, stored, strict=True):
            _settle(waiting.done, rows)


def answer(rows: list[Stored]) -> dict[str, Any]:
    """The body of the 202 to a request that stored `rows` (and of its replays)."""
    return {"messages": service.accepted(rows)}


def _key(claim: idempotency.Claim) -> tuple[int, str]:
    return claim.api_key_id, claim.key


def _settle(future: asyncio.Future[list[Stored] | None], rows: list[Stored] | None) -> None:
    if not future.done():
        future.set_result(rows)


def _unavailable(exc: Exception) -> bool:
    """Whether `exc` is the database's own failure, which no request of a group causes."""
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sa.exc.OperationalError | sa.exc.InterfaceError
        )
    # The pool had no connection to give, or none could be opened.
    return isinstance(exc, sa.exc.TimeoutError | OSError)


def _not_stored(exc: Exception) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"the database is not available ({type(exc).__name__}): nothing was stored; retry later"
    )


def _unconfirmed(exc: Exception) -> StoreUnconfirmed:
    return StoreUnconfirmed(
        f"the database did not confirm storing the messages ({type(exc).__name__}): they may "
        "have been stored, and are then sent; look for them (GET /messages?to=) before sending "
        "again (a request sent with an Idempotency-Key can be retried safely)"
    )


def _fail_all(group: list[Waiting], exc: Exception) -> None:
    for waiting in group:
        _fail(waiting.done, exc)


def _fail(future: asyncio.Future[list[Stored] | None], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
