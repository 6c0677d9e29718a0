"""The webhook dispatcher: events → deliveries (cursor in the database) → signed HTTP POSTs.

Runs as a task beside the arq workers in every worker process. Several processes share the
work safely: the cursor moves by a conditional UPDATE (one walker wins each step) and each
delivery is leased before it is attempted. A receiver that hangs holds one slot until the
timeout, never the others. Delivery is at least once; receivers de-duplicate by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.settings import Settings
from app.models import DeliveryStatus, Event, MessageStream, WebhookEndpoint, utcnow
from app.webhooks import repository
from app.webhooks.egress import EgressGuard, UnsafeUrl, check_shape, webhook_client

logger = logging.getLogger(__name__)
WALK_PAGE = 500
SKIP_PAGE = 20_000
MAX_PAGES_PER_TICK = 20
IDLE_SKIP_INTERVAL = 10.0
"""Seconds between two skips of the cursor while no endpoint exists. The skip only keeps the
walk short for an endpoint created later (older events never match it): at every poll it
cost each worker four statements and a commit, for no receiver at all."""
SIGNATURE_HEADER = "Warta-Signature"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def payload(event: Event, stream: MessageStream | None) -> dict[str, Any]:
    """The JSON body of one event; `id` is the event id receivers de-duplicate by."""
    return {
        "id": event.id,
        "type": event.kind,
        "created_at": event.created_at.isoformat(),
        "email": event.email,
        "stream": stream.value if stream else None,
        "message_id": event.message_id,
        "campaign_id": event.campaign_id,
        "subscriber_id": event.subscriber_id,
        "data": event.data,
    }


def matches(endpoint: WebhookEndpoint, event: Event, stream: MessageStream | None) -> bool:
    """Whether the endpoint wants this event (kind, stream, campaign, and not older than it)."""
    if event.kind not in endpoint.event_types or event.created_at < endpoint.created_at:
        return False
    if endpoint.stream is not None and stream != endpoint.stream:
        return False
    return endpoint.campaign_id is None or event.campaign_id == endpoint.campaign_id


def _stream(event: Event, streams: dict[int, MessageStream]) -> MessageStream | None:
    if event.message_id is not None:
        return streams.get(event.message_id)
    if event.campaign_id is not None or event.send_id is not None:
        return MessageStream.broadcast
    return None


class WebhookDispatcher:
    """Walks the events into deliveries and attempts the due ones, forever."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.client = client or webhook_client(
            EgressGuard.from_settings(settings), settings.webhook_timeout
        )
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._listening = True  # whether the last walk found an endpoint
        self._next_skip = 0.0  # monotonic time of the next skip while nobody listens

    async def run(self, stop: asyncio.Event) -> None:
        """Fan out and deliver every poll interval until `stop` is set."""
        try:
            while not stop.is_set():
                try:
                    await self.fan_out()
                    if self._listening or self._in_flight:  # no endpoint: no delivery either
                        await self.deliver_due()
                except Exception:
                    logger.exception("webhook dispatcher step failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.webhook_poll_interval)
        finally:
            for task in self._in_flight:
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            await self.client.aclose()

    async def fan_out(self) -> int:
        """Turn settled events after the cursor into deliveries; returns how many were made."""
        made = 0
        for _ in range(MAX_PAGES_PER_TICK):
            async with self.sessionmaker() as session:
                self._listening = await repository.any_endpoint(session)
                if not self._listening and time.monotonic() < self._next_skip:
                    return made
                # Before the endpoints are loaded: creating the cursor row may roll back
                # (another dispatcher made it first), which expires loaded objects.
                position = await repository.cursor_position(session)
                cutoff = utcnow() - timedelta(seconds=self.settings.webhook_settle)
                endpoints = await repository.endpoints(session) if self._listening else []
                if not endpoints:
                    # Nobody listens: move past the settled events without loading them.
                    end = await repository.settled_end(session, position, cutoff, SKIP_PAGE)
                    if end == position or not await repository.advance(session, position, end, []):
                        self._next_skip = time.monotonic() + IDLE_SKIP_INTERVAL
                        return made
                    await session.commit()
                    continue
                events = await repository.settled_events(session, position, cutoff, WALK_PAGE)
                if not events:
                    return made
                streams = await repository.streams_of(
                    session, {e.message_id for e in events if e.message_id is not None}
                )
                deliveries = [
                    (endpoint.id, event.id)
                    for event in events
                    for endpoint in endpoints
                    if matches(endpoint, event, _stream(event, streams))
                ]
                if not await repository.advance(session, position, events[-1].id, deliveries):
                    return made  # another dispatcher took this step
                await session.commit()
            made += len(deliveries)
            if len(events) < WALK_PAGE:
                return made
        return made

    async def deliver_due(self) -> int:
        """Lease the due deliveries there are free slots for and start them; returns how many."""
        free = self.settings.webhook_concurrency - len(self._in_flight)
        token = secrets.token_hex(8)
        lease = timedelta(seconds=self.settings.webhook_timeout + 30)
        async with self.sessionmaker() as session:
            due = await repository.lease_due(session, token, utcnow(), lease, free)
            await session.commit()
            streams = await repository.streams_of(
                session, {d.event.message_id for d in due if d.event.message_id is not None}
            )
        for item in due:
            task = asyncio.create_task(self._attempt(item, token, _stream(item.event, streams)))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(due)

    async def _attempt(
        self, item: repository.Due, token: str, stream: MessageStream | None
    ) -> None:
        async with self._slots:
            code, error = await self._post(item, stream)
        now = utcnow()
        values: dict[str, Any] = {"attempts": item.attempts + 1, "response_code": code}
        give_up = False
        if error is None:
            values.update(status=DeliveryStatus.delivered, delivered_at=now, last_error="")
        else:
            values["last_error"] = error[:500]
            age = (now - item.created_at).total_seconds()
            if age >= self.settings.webhook_retry_window:
                values["status"] = DeliveryStatus.failed
                give_up = True
            else:
                wait = min(
                    self.settings.webhook_retry_base * 2**item.attempts,
                    self.settings.webhook_retry_max,
                )
                values["next_attempt_at"] = now + timedelta(seconds=wait)
        try:
            async with self.sessionmaker() as session:
                await repository.record_result(session, item.id, token, values)
                if give_up:
                    await repository.disable(
                        session,
                        item.endpoint_id,
                        f"deliveries failed for {self.settings.webhook_retry_window:g} s; "
                        f"last error: {error}",
                    )
                await session.commit()
        except Exception:
            logger.exception("could not record webhook delivery %s", item.id)

    async def _post(
        self, item: repository.Due, stream: MessageStream | None
    ) -> tuple[int | None, str | None]:
        """POST the event; (status code, None) on 2xx, else (code or None, the reason).

        The addresses are checked by the client's transport as it connects (egress.py).
        """
        try:
            check_shape(item.url)
        except UnsafeUrl as exc:
            return None, f"refused: {exc.detail}"
        body = json.dumps(payload(item.event, stream), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(item.secret, int(time.time()), body),
            "Warta-Event-Id": str(item.event.id),
            "Warta-Delivery-Id": str(item.id),
        }
        try:
            response = await self.client.post(item.url, content=body, headers=headers)
        except UnsafeUrl as exc:
            return None, f"refused: {exc.detail}"
        except httpx.TimeoutException:
            return None, f"timeout after {self.settings.webhook_timeout:g} s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return response.status_code, None
        return response.status_code, f"HTTP {response.status_code}"
