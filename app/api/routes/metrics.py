"""/metrics: Prometheus text format, from the database and every live MTA instance."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from app.api.deps import require
from app.audience import subscribers as subscribers_service
from app.core.http import SessionDep
from campaigns import service as campaigns_service
from workers.mta import control as mta_status

router = APIRouter(tags=["health"])
MTA_COUNTERS = {
    "accepted": ("warta_mta_accepted_total", "counter", "Messages accepted into the spool."),
    "delivered": ("warta_mta_delivered_total", "counter", "Recipients delivered."),
    "deferred": ("warta_mta_deferred_total", "counter", "Delivery attempts deferred."),
    "failed": ("warta_mta_failed_total", "counter", "Recipients failed permanently."),
    "queue_size": ("warta_mta_queue_size", "gauge", "Messages waiting in the spool."),
    "fsync_seconds_total": ("warta_mta_spool_fsync_seconds_total", "counter", "Time in fsync."),
    "fsync_commits": ("warta_mta_spool_commits_total", "counter", "Spool group commits."),
    "fsync_last_seconds": ("warta_mta_spool_fsync_last_seconds", "gauge", "Last fsync pass."),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(require("metrics:read"))],
    responses={401: {"description": "No API key"}, 403: {"description": "Lacks metrics:read"}},
)
async def metrics(request: Request, session: SessionDep) -> PlainTextResponse:
    """Campaigns by status, subscribers, and the MTA counters per instance.

    Needs an API key with `metrics:read` (or `admin`): the figures describe the business.
    """
    lines = [
        "# HELP warta_campaigns Campaigns by status.",
        "# TYPE warta_campaigns gauge",
    ]
    for status, count in (await campaigns_service.count_by_status(session)).items():
        lines.append(f'warta_campaigns{{status="{status.value}"}} {count}')
    subscribers = await subscribers_service.count_all(session)
    lines += [
        "# HELP warta_subscribers Subscribers stored.",
        "# TYPE warta_subscribers gauge",
        f"warta_subscribers {subscribers}",
    ]
    snapshots = await mta_status.snapshots(request.app.state.queue)
    for field, (name, kind, text) in MTA_COUNTERS.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for snap in snapshots:
            lines.append(
                f'{name}{{instance="{_label(str(snap["instance"]))}"}} {snap.get(field, 0)}'
            )
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
