"""The dashboard: the last 30 days as charts, campaigns running now, the MTA queue."""

from __future__ import annotations

import time
from typing import Any

from fastapi.responses import HTMLResponse, JSONResponse

from app.admin import overview as figures
from app.admin.charts import Series, Threshold, line_chart
from app.admin.deps import CurrentAdmin, RedisDep, needs, page_router
from app.admin.rendering import HEADERS, render
from app.core.http import SessionDep, SettingsDep

router = page_router()
READ = [needs("campaigns:read")]


def _charts(daily: figures.Daily, guard_rate: float) -> list[dict[str, Any]]:
    """Each chart with the table that says the same in words and numbers."""
    days = daily.days
    volume = [
        Series("Sent", daily.series("sent")),
        Series("Delivered", daily.series("delivered")),
    ]
    bounce = [Series("Bounce rate", daily.bounce_rates())]
    complaint = [Series("Complaint rate", daily.complaint_rates())]
    engagement = [
        Series("Opens (people)", daily.series("opened")),
        Series("Opens (machines)", daily.series("opened_machine")),
        Series("Clicks (people)", daily.series("clicked")),
        Series("Unsubscribes", daily.series("unsubscribed")),
    ]
    guard = Threshold(f"Warta pauses a campaign at {guard_rate * 100:g} %", guard_rate)
    limits = [
        Threshold("0.3 %: Gmail and Yahoo limit", figures.COMPLAINT_LIMIT),
        Threshold("0.1 %: Gmail's advice", figures.COMPLAINT_TARGET, soft=True),
    ]
    specs = [
        ("volume", "Sent and delivered per day", volume, [], False),
        ("bounces", "Bounce rate per day (bounced / sent)", bounce, [guard], True),
        ("complaints", "Complaint rate per day (complaints / delivered)", complaint, limits, True),
        ("engagement", "Opens, clicks and unsubscribes per day", engagement, [], False),
    ]
    charts = []
    for chart_id, title, series, thresholds, percent in specs:
        described = "; ".join(
            f"{s.label}: {_summary(s.values, percent)}" for s in series
        ) + "".join(f"; threshold {t.label}" for t in thresholds)
        charts.append(
            {
                "id": chart_id,
                "title": title,
                "svg": line_chart(
                    chart_id,
                    title,
                    f"Last {len(days)} days. {described}.",
                    days,
                    series,
                    thresholds,
                    percent=percent,
                ),
                "series": series,
                "thresholds": thresholds,
                "percent": percent,
            }
        )
    return charts


def _summary(values: Any, percent: bool) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "no data"
    if percent:
        return f"highest {max(known) * 100:.2f} %"
    return f"total {sum(known):,.0f}, highest day {max(known):,.0f}"


@router.get("/", dependencies=READ)
async def dashboard(
    admin: CurrentAdmin, session: SessionDep, redis: RedisDep, settings: SettingsDep
) -> HTMLResponse:
    """The overview page."""
    daily = await figures.daily(session)
    sent, delivered = daily.total("sent"), daily.total("delivered")
    return render(
        "dashboard.html",
        admin,
        title="Dashboard",
        current="/admin/",
        daily=daily,
        charts=_charts(daily, settings.bounce_guard_hard_rate),
        bounce_rate=figures.rate(daily.total("bounced"), sent),
        complaint_rate=figures.rate(daily.total("complained"), delivered),
        complaint_limit=figures.COMPLAINT_LIMIT,
        running=await figures.running(session),
        queue=await figures.queue_health(redis),
        duration=figures.duration,
        can_pause=admin.can("campaigns:write"),
        now=time.time(),
    )


@router.get("/live.json", dependencies=READ)
async def live(session: SessionDep, redis: RedisDep) -> JSONResponse:
    """Running campaigns and queue health, polled by admin.js every few seconds."""
    running = await figures.running(session)
    queue = await figures.queue_health(redis)
    body = {
        "campaigns": [{**p.as_json(), "eta": figures.duration(p.eta_seconds)} for p in running],
        "queue": {**queue.as_json(), "oldest": figures.duration(queue.oldest_age)},
    }
    return JSONResponse(body, headers=HEADERS)
