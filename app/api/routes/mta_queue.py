"""/queue: the MTA queues of every running instance, and operator actions on them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import Field, StringConstraints

from app.api.deps import require
from app.api.schemas.common import Strict
from workers.mta import control as mta_status

router = APIRouter(prefix="/queue", tags=["queue"])
READ = [Depends(require("queue:read"))]
WRITE = [Depends(require("queue:write"))]
QueueId = Annotated[str, Path(pattern=r"^[0-9a-f]{16,40}$", description="As listed by the MTA.")]


class DestinationAction(Strict):
    """A destination key (as listed by GET /queue) and, to suspend, until when."""

    destination: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    until: float | None = Field(None, gt=0, description="Unix time; default one hour from now.")


class FlushAction(Strict):
    """Flush one recipient domain's messages, or everything when omitted."""

    domain: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None


class CommandResult(Strict):
    """How many MTA instances received the command."""

    instances: int


@router.get("", dependencies=READ)
async def show_queue(request: Request) -> dict[str, Any]:
    """Per MTA instance, per recipient domain (queued, deferred, oldest age) and per
    destination (current rate, suspended until, connections)."""
    return mta_status.aggregate(await mta_status.snapshots(request.app.state.queue))


@router.post("/flush", dependencies=WRITE)
async def flush(body: FlushAction, request: Request) -> CommandResult:
    """Retry waiting messages now (one domain or all), like `postqueue -f`."""
    heard = await mta_status.command(request.app.state.queue, "flush", domain=body.domain)
    return CommandResult(instances=heard)


@router.post("/destinations/suspend", dependencies=WRITE)
async def suspend(body: DestinationAction, request: Request) -> CommandResult:
    """Stop delivering to a destination until a time (default: one hour)."""
    heard = await mta_status.command(
        request.app.state.queue, "suspend", destination=body.destination, until=body.until
    )
    return CommandResult(instances=heard)


@router.post("/destinations/resume", dependencies=WRITE)
async def resume(body: DestinationAction, request: Request) -> CommandResult:
    """Lift a destination's suspension."""
    heard = await mta_status.command(
        request.app.state.queue, "resume", destination=body.destination
    )
    return CommandResult(instances=heard)


@router.delete("/messages/{queue_id}", dependencies=WRITE)
async def delete_message(queue_id: QueueId, request: Request) -> CommandResult:
    """Remove a waiting message without notifying anyone."""
    heard = await mta_status.command(request.app.state.queue, "delete", queue_id=queue_id)
    return CommandResult(instances=heard)


@router.post("/messages/{queue_id}/bounce", dependencies=WRITE)
async def bounce_message(queue_id: QueueId, request: Request) -> CommandResult:
    """Fail a waiting message's recipients now (the sender gets a DSN where one is due)."""
    heard = await mta_status.command(request.app.state.queue, "bounce", queue_id=queue_id)
    return CommandResult(instances=heard)
