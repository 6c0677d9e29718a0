"""A campaign's report: delivered, bounced by class, complaints, unsubscribes; opens, clicks
and deliveries over time (server-rendered SVG with its table); clicks per link; the top
recipient domains and where their mail is.

The figures are those of the API's GET /campaigns/{id}/stats (`lifecycle.stats`, the bounce
service's counts, the event counts), the engagement tallies, the daily rollups of the
campaign, and `campaigns.reach` for the domains.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from fastapi.responses import HTMLResponse

from app.admin.charts import Series, line_chart
from app.admin.deps import CurrentAdmin, needs, page_router
from app.admin.pages.forms import DbId, refuse
from app.admin.rendering import render
from app.bounces import service as bounces
from app.core import event_rollups
from app.core.errors import DomainError
from app.core.events import counts_by_kind
from app.core.http import SessionDep
from app.models import EventKind
from campaigns import engagement, lifecycle, reach

router = page_router()
READ = [needs("campaigns:read")]
MIN_DAYS = 7
MAX_DAYS = 60
OVER_TIME = (EventKind.delivered, EventKind.opened, EventKind.clicked, EventKind.unsubscribed)


def report_days(started: datetime | None, today: date) -> list[date]:
    """The days the chart spans: from the start of sending to today, at least a week."""
    first = started.astimezone(UTC) if started and started.tzinfo else started or today
    first_day = first.date() if isinstance(first, datetime) else first
    span = min(max((today - first_day).days + 1, MIN_DAYS), MAX_DAYS)
    return [today - timedelta(days=span - 1 - i) for i in range(span)]


@router.get("/campaigns/{campaign_id}/report", dependencies=READ)
async def report(campaign_id: DbId, admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """The campaign's results."""
    try:
        stats = await lifecycle.stats(session, campaign_id)
    except DomainError as exc:
        refuse(exc)
    campaign = stats.campaign
    days = report_days(campaign.started_at, datetime.now(UTC).date())
    found = await event_rollups.daily(
        session, days[0], [k.value for k in OVER_TIME], campaign_id=campaign_id
    )
    index = {day: i for i, day in enumerate(days)}
    per_day: dict[str, list[float | None]] = {k.value: [0] * len(days) for k in OVER_TIME}
    for (day, kind, machine), count in found.items():
        if day in index and not machine:  # people, not mail scanners
            values = per_day[kind]
            values[index[day]] = (values[index[day]] or 0) + count
    series = [
        Series("Delivered", per_day["delivered"]),
        Series("Opens", per_day["opened"]),
        Series("Clicks", per_day["clicked"]),
        Series("Unsubscribes", per_day["unsubscribed"]),
    ]
    described = "; ".join(f"{s.label}: total {sum(v or 0 for v in s.values):,.0f}" for s in series)
    chart = line_chart(
        "over-time",
        "Deliveries, opens, clicks and unsubscribes per day",
        f"{days[0].isoformat()} to {days[-1].isoformat()}. {described}.",
        days,
        series,
    )
    events = await counts_by_kind(session, campaign_id)
    return render(
        "campaign_report.html",
        admin,
        title=f"Report: {campaign.name}",
        current="/admin/campaigns",
        campaign=campaign,
        stats=stats,
        bounced=await bounces.campaign_counts(session, campaign_id),
        events=events,
        opens=await engagement.opens(session, campaign_id),
        links=await engagement.link_clicks(session, campaign_id),
        domains=await reach.top_domains(session, campaign_id),
        days=days,
        chart=chart,
        series=series,
    )
