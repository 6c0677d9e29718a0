"""What the dashboard shows: 30 days of rollups, the campaigns running now, the MTA queue.

Every figure comes from a rollup, the ledger of a running campaign, or the MTA's own
status snapshot in Redis: nothing here scans the events table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import event_rollups
from app.models import OPEN_STATUSES, EventKind
from campaigns import lifecycle
from workers.mta import control as mta_status

DAYS = 30
RUNNING_SHOWN = 20
KINDS = (
    EventKind.sent,
    EventKind.delivered,
    EventKind.bounced,
    EventKind.complained,
    EventKind.opened,
    EventKind.clicked,
    EventKind.unsubscribed,
)
COMPLAINT_LIMIT = 0.003
"""Gmail's and Yahoo's bulk-sender rule (2024): keep the spam-complaint rate under 0.3 %."""
COMPLAINT_TARGET = 0.001
"""What Gmail advises aiming for: under 0.1 %."""


def rate(part: int, whole: int) -> float | None:
    """part / whole, or None when there is nothing to divide by."""
    return part / whole if whole else None


@dataclass
class Daily:
    """Per-day counts for the last DAYS days (oldest first)."""

    days: list[date]
    counts: dict[str, list[int]] = field(default_factory=dict)

    def series(self, name: str) -> list[int]:
        """One kind's counts (`opened_machine` etc. for the machine share)."""
        return self.counts.get(name, [0] * len(self.days))

    def total(self, name: str) -> int:
        """One kind over the whole period."""
        return sum(self.series(name))

    def bounce_rates(self) -> list[float | None]:
        """Bounced / sent per day."""
        return [
            rate(b, s) for b, s in zip(self.series("bounced"), self.series("sent"), strict=True)
        ]

    def complaint_rates(self) -> list[float | None]:
        """Complaints / delivered per day (Gmail's spam rate divides by delivered mail)."""
        return [
            rate(c, d)
            for c, d in zip(self.series("complained"), self.series("delivered"), strict=True)
        ]


async def daily(session: AsyncSession, today: date | None = None) -> Daily:
    """The last DAYS days of rollups, machine opens and scanner clicks apart."""
    today = today or datetime.now(UTC).date()
    days = [today - timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    index = {day: i for i, day in enumerate(days)}
    found = await event_rollups.daily(session, days[0], [k.value for k in KINDS])
    figures = Daily(days=days)
    for (day, kind, machine), count in found.items():
        if day not in index:
            continue
        name = f"{kind}_machine" if machine and kind in ("opened", "clicked") else kind
        figures.counts.setdefault(name, [0] * DAYS)[index[day]] += count
    return figures


@dataclass(frozen=True)
class Progress:
    """A running (or paused) campaign's progress, as its ledger says now."""

    id: int
    name: str
    status: str
    recipients: int
    done: int
    rate: float
    eta_seconds: float | None

    @property
    def percent(self) -> float:
        """Share of recipients handled, in percent."""
        return 100.0 * self.done / self.recipients if self.recipients else 0.0

    def as_json(self) -> dict[str, Any]:
        """What the live endpoint returns for it."""
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "recipients": self.recipients,
            "done": self.done,
            "percent": round(self.percent, 1),
            "rate": round(self.rate, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds),
        }


async def progress(session: AsyncSession, campaign_id: int) -> Progress:
    """One campaign's progress from its ledger (the campaign page's live bar uses this too)."""
    stats = await lifecycle.stats(session, campaign_id)
    remaining = sum(stats.counts.get(s.value, 0) for s in OPEN_STATUSES)
    return Progress(
        id=campaign_id,
        name=stats.campaign.name,
        status=stats.campaign.status.value,
        recipients=stats.recipients,
        done=sum(stats.counts.values()) - remaining,
        rate=stats.rate,
        eta_seconds=stats.eta_seconds,
    )


async def running(session: AsyncSession) -> list[Progress]:
    """Campaigns sending now, with progress, current rate and ETA."""
    campaigns = (await lifecycle.running_campaigns(session))[:RUNNING_SHOWN]
    return [await progress(session, campaign.id) for campaign in campaigns]


@dataclass(frozen=True)
class QueueHealth:
    """The MTA queue over every live instance."""

    instances: int
    queued: int
    deferred: int
    oldest_age: float
    suspended: list[dict[str, Any]]
    busiest: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        """What the live endpoint returns for it."""
        return {
            "instances": self.instances,
            "queued": self.queued,
            "deferred": self.deferred,
            "oldest_age": round(self.oldest_age),
            "suspended": len(self.suspended),
        }


async def queue_health(redis: Redis, now: float | None = None) -> QueueHealth:
    """Queued and deferred messages, the oldest, and suspended destinations (as GET /queue)."""
    view = mta_status.aggregate(await mta_status.snapshots(redis))
    now = time.time() if now is None else now
    domains = view["domains"]
    suspended = [
        d
        for d in view["destinations"]
        if d.get("suspended_until") is not None and d["suspended_until"] > now
    ]
    return QueueHealth(
        instances=len(view["instances"]),
        queued=sum(d["queued"] for d in domains),
        deferred=sum(d["deferred"] for d in domains),
        oldest_age=max((d["oldest_age"] for d in domains), default=0.0),
        suspended=suspended,
        busiest=sorted(domains, key=lambda d: d["queued"], reverse=True)[:10],
    )


def duration(seconds: float | None) -> str:
    """A short human duration: 45 s, 12 min, 3 h 5 min; "unknown" for None."""
    if seconds is None:
        return "unknown"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
