"""Campaigns: the list, the wizard (content → audience with a live count → preview and test
send → send now or schedule), and a running campaign's live progress.

Every step calls what the API's /campaigns routes call: `campaigns.service` for the draft,
`campaigns.content` for the preview and the render check, `lifecycle.transition` and the
start job to send, the test-send job for a test. Pause, resume and cancel post to the
foundation's `campaign_actions`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from app.admin import audit
from app.admin.deps import CurrentAdmin, Refused, SignedIn, needs, page_router
from app.admin.overview import duration
from app.admin.pages import segment_builder
from app.admin.pages.forms import MAX_ID, DbId, after_rollback, refuse
from app.admin.pages.templates import (
    EDITOR_CSP,
    PREVIEW_HEADERS,
    find_subscriber,
    source_error,
)
from app.admin.rendering import HEADERS, render
from app.audience import lists as lists_service
from app.core.errors import DomainError, Invalid
from app.core.http import SessionDep, SettingsDep
from app.core.jobs import enqueue_start, enqueue_test_send
from app.mail import templates as templates_service
from app.models import OPEN_STATUSES, Campaign, CampaignStatus
from campaigns import content, lifecycle, reach
from campaigns import service as service

router = page_router()
READ = [needs("campaigns:read")]
WRITE = [needs("campaigns:write")]
SHOWN = 500
TEST_SEND_WAIT = 30.0
MAX_TEST_ADDRESSES = 10
LIVE = (CampaignStatus.scheduled, CampaignStatus.running, CampaignStatus.paused)


async def _campaign(session: SessionDep, campaign_id: int) -> Campaign:
    try:
        return await service.get(session, campaign_id)
    except DomainError as exc:
        refuse(exc)


def progress_of(stats: lifecycle.Stats) -> dict[str, Any]:
    """A campaign's progress as the page shows it and the poll returns it."""
    remaining = sum(stats.counts.get(s.value, 0) for s in OPEN_STATUSES)
    handled = sum(stats.counts.values()) - remaining
    status = stats.campaign.status
    percent = 100.0 * handled / stats.recipients if stats.recipients else 0.0
    if status is CampaignStatus.finished:
        percent = 100.0
    return {
        "status": status.value,
        "percent": round(percent, 1),
        "done_count": handled,
        "recipients": stats.recipients,
        "delivered": stats.counts.get("delivered", 0),
        "rate": f"{stats.rate:.1f}/s",
        "eta": duration(stats.eta_seconds),
        "done": status in (CampaignStatus.finished, CampaignStatus.cancelled),
    }


@router.get("/campaigns", dependencies=READ)
async def campaigns_page(admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """Every campaign, newest first."""
    found = (await service.page(session, 0, SHOWN, None))[:SHOWN]
    return render(
        "campaigns.html",
        admin,
        title="Campaigns",
        current="/admin/campaigns",
        campaigns=list(reversed(found)),
        can_write=admin.can("campaigns:write"),
    )


async def _new_page(
    admin: SignedIn,
    session: SessionDep,
    fields: dict[str, Any],
    *,
    error: str = "",
    status: int = 200,
) -> HTMLResponse:
    return render(
        "campaign_new.html",
        admin,
        status=status,
        title="New campaign",
        current="/admin/campaigns",
        fields=fields,
        templates=(await templates_service.page(session, 0, SHOWN))[:SHOWN],
        error=error,
    )


@router.get("/campaigns/new", dependencies=WRITE)
async def new_campaign(
    admin: CurrentAdmin,
    session: SessionDep,
    template_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> HTMLResponse:
    """Step 1: the content."""
    fields = {"name": "", "subject": "", "from_email": "", "template_id": template_id}
    return await _new_page(admin, session, fields)


@router.post("/campaigns/new", dependencies=WRITE, response_model=None)
async def create_campaign(
    admin: CurrentAdmin,
    session: SessionDep,
    name: Annotated[str, Form(min_length=1, max_length=200)],
    from_email: Annotated[str, Form(min_length=3, max_length=400)],
    template_id: Annotated[int, Form(ge=1, le=MAX_ID)],
    subject: Annotated[str, Form(max_length=998)] = "",
    tracking: Annotated[str, Form(max_length=8)] = "",
) -> HTMLResponse | RedirectResponse:
    """Save the draft (audited) and go on to its audience."""
    fields: dict[str, Any] = {
        "name": name.strip(),
        "subject": subject,
        "from_email": from_email.strip(),
        "template_id": template_id,
        "tracking": tracking == "on",
        "list_ids": [],
    }
    try:
        created = await service.create(session, dict(fields))
    except DomainError as exc:
        await after_rollback(session, admin)
        return await _new_page(admin, session, fields, error=exc.detail, status=exc.status)
    await audit.record(
        session, admin.user, "campaign.create", f"campaign:{created.id}", {"name": name}
    )
    await session.commit()
    return RedirectResponse(f"/admin/campaigns/{created.id}#audience", status_code=303)


@router.get("/campaigns/{campaign_id}", dependencies=READ)
async def campaign_page(
    campaign_id: DbId, admin: CurrentAdmin, session: SessionDep
) -> HTMLResponse:
    """A draft's wizard, or a sending campaign's live progress."""
    return await _campaign_page(campaign_id, admin, session)


async def _campaign_page(
    campaign_id: int, admin: SignedIn, session: SessionDep, notice: str = ""
) -> HTMLResponse:
    campaign = await _campaign(session, campaign_id)
    stats = await lifecycle.stats(session, campaign_id)
    targets = (await service.list_ids(session, [campaign_id]))[campaign_id]
    context: dict[str, Any] = {
        "campaign": campaign,
        "progress": progress_of(stats),
        "targets": targets,
        "can_write": admin.can("campaigns:write"),
        "notice": notice,
    }
    if campaign.status is CampaignStatus.draft:
        context |= {
            "lists": (await lists_service.page(session, 0, SHOWN))[:SHOWN],
            **_builder(campaign.segment),
            "reach": await reach.audience_count(session, campaign) if targets else 0,
            "content_template": await templates_service.get(session, campaign.template_id)
            if campaign.template_id
            else None,
        }
    response = render(
        "campaign.html",
        admin,
        title=f"Campaign: {campaign.name}",
        current="/admin/campaigns",
        **context,
    )
    response.headers["Content-Security-Policy"] = EDITOR_CSP
    return response


Many = Annotated[list[Annotated[str, Field(max_length=1000)]], Field(max_length=50)]


class AudienceForm(BaseModel):
    """The audience step as posted: lists, the builder's rows, or a segment typed as JSON."""

    list_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field([], max_length=1000)
    segment: str = Field("", max_length=100_000)
    match: str = Field("all", max_length=8)
    rule_subject: Many = []
    rule_attribute: Many = []
    rule_op: Many = []
    rule_value: Many = []

    def changes(self) -> dict[str, Any]:
        """The draft's new lists and segment; JSON typed in the box wins over the builder."""
        if self.segment.strip():
            try:
                parsed = json.loads(self.segment)
            except ValueError as exc:
                raise Invalid(f"the segment is not JSON: {exc}") from None
        else:
            rows = segment_builder.rows_from_form(
                self.rule_subject, self.rule_attribute, self.rule_op, self.rule_value
            )
            parsed = segment_builder.to_segment(self.match, rows)
        return {"list_ids": self.list_ids, "segment": parsed}


AudienceDep = Annotated[AudienceForm, Form()]


def _builder(segment: dict[str, Any] | None) -> dict[str, Any]:
    """The builder's rows for a stored segment it can show; else the segment as JSON."""
    shown = segment_builder.to_rows(segment)
    match, rows = shown if shown is not None else ("all", [])
    empty = max(segment_builder.ROWS_SHOWN - len(rows), 1)
    return {
        "segment": "" if shown is not None else json.dumps(segment, indent=2),
        "segment_json": json.dumps(segment, indent=2) if segment else "(none)",
        "match": match,
        "rows": rows + [segment_builder.Row()] * empty,
        "subjects": segment_builder.SUBJECTS,
        "ops": segment_builder.OP_LABELS,
    }


@router.post("/campaigns/{campaign_id}/audience", dependencies=WRITE)
async def set_audience(
    campaign_id: DbId,
    admin: CurrentAdmin,
    session: SessionDep,
    form: AudienceDep,
) -> RedirectResponse:
    """Step 2: the lists and the segment (audited)."""
    try:
        changes = form.changes()
        await service.update(session, campaign_id, dict(changes))
    except DomainError as exc:
        refuse(exc)
    await audit.record(session, admin.user, "campaign.audience", f"campaign:{campaign_id}", changes)
    await session.commit()
    return RedirectResponse(f"/admin/campaigns/{campaign_id}#preview", status_code=303)


@router.post("/campaigns/{campaign_id}/audience/count", dependencies=READ)
async def count_audience(
    campaign_id: DbId,
    session: SessionDep,
    form: AudienceDep,
) -> JSONResponse:
    """The live count: the choices applied to the draft in a transaction that is rolled
    back, so the count follows exactly the rules sending will (nothing is saved)."""
    try:
        changes = form.changes()
        campaign = await service.update(session, campaign_id, dict(changes))
        count = await reach.audience_count(session, campaign) if form.list_ids else 0
        text = f"{count:,} subscribers would receive it now."
        segment = json.dumps(changes["segment"], indent=2) if changes["segment"] else "(none)"
    except DomainError as exc:
        text, segment = exc.detail, ""
    finally:
        await session.rollback()
    return JSONResponse({"text": text, "segment": segment}, headers=HEADERS)


@router.get("/campaigns/{campaign_id}/preview", dependencies=READ)
async def preview_campaign(
    campaign_id: DbId,
    admin: CurrentAdmin,
    session: SessionDep,
    settings: SettingsDep,
    subscriber: Annotated[str, Query(max_length=320)] = "",
) -> HTMLResponse:
    """The draft as one subscriber (or a sample) would receive it, for the preview frame."""
    campaign = await _campaign(session, campaign_id)
    recipient = None
    if admin.can("subscribers:read"):  # a subscriber's preview shows their data
        recipient = await find_subscriber(session, subscriber)
    try:
        built = await content.preview(session, settings, campaign, recipient)
        error = None
    except DomainError as exc:
        built, error = None, source_error(exc.detail)
    page = render(
        "template_preview.html",
        None,
        error=error,
        lines=[],
        built=built,
        recipient=recipient,
        asked=subscriber,
    )
    page.headers.update(PREVIEW_HEADERS)
    del page.headers["X-Frame-Options"]
    return page


@router.post("/campaigns/{campaign_id}/test", dependencies=WRITE)
async def test_send(
    campaign_id: DbId,
    request: Request,
    admin: CurrentAdmin,
    session: SessionDep,
    settings: SettingsDep,
    addresses: Annotated[str, Form(min_length=3, max_length=4000)],
) -> HTMLResponse:
    """Step 3: send the draft to test addresses now and show the MTA's replies (audited)."""
    wanted = [a.strip() for a in addresses.replace(",", "\n").splitlines() if a.strip()]
    if not wanted or len(wanted) > MAX_TEST_ADDRESSES:
        raise Refused(422, "Test addresses", f"Give one to {MAX_TEST_ADDRESSES} addresses.")
    campaign = await _campaign(session, campaign_id)
    try:
        await content.check_renders(session, settings, campaign)
    except DomainError as exc:
        refuse(exc)
    await audit.record(
        session, admin.user, "campaign.test", f"campaign:{campaign_id}", {"to": wanted}
    )
    await session.commit()
    job = await enqueue_test_send(request.app.state.queue, campaign_id, wanted)
    try:
        replies = await job.result(timeout=TEST_SEND_WAIT, poll_delay=0.05)
    except TimeoutError:
        raise Refused(
            504, "No worker answered", "No worker sent the test in 30 s; is `warta worker` running?"
        ) from None
    said = f"Test sent to {', '.join(wanted)}: {'; '.join(str(r) for r in replies)}"
    return await _campaign_page(campaign_id, admin, session, notice=said[:1000])


@router.post("/campaigns/{campaign_id}/send", dependencies=WRITE)
async def send(
    campaign_id: DbId,
    request: Request,
    admin: CurrentAdmin,
    session: SessionDep,
    settings: SettingsDep,
    send_at: Annotated[str, Form(max_length=32)] = "",
) -> RedirectResponse:
    """Step 4: send now, or at `send_at` (UTC) — draft → scheduled, audited."""
    try:
        when = datetime.fromisoformat(send_at).replace(tzinfo=UTC) if send_at else None
    except ValueError:
        raise Refused(422, "Bad time", "Give the time as 2026-12-31T09:00 (UTC).") from None
    try:
        if when is not None:
            await service.update(session, campaign_id, {"send_at": when})
        campaign = await service.get(session, campaign_id)
        if not (await service.list_ids(session, [campaign_id]))[campaign_id]:
            raise Invalid("choose the lists it goes to first")
        await content.check_renders(session, settings, campaign)
        await lifecycle.transition(session, campaign_id, "schedule")
    except DomainError as exc:
        refuse(exc)
    await audit.record(
        session,
        admin.user,
        "campaign.schedule" if when else "campaign.send",
        f"campaign:{campaign_id}",
        {"send_at": when.isoformat() if when else "now"},
    )
    await session.commit()
    await enqueue_start(request.app.state.queue, campaign_id)
    return RedirectResponse(f"/admin/campaigns/{campaign_id}", status_code=303)


@router.get("/campaigns/{campaign_id}/progress.json", dependencies=READ)
async def progress(campaign_id: DbId, session: SessionDep) -> JSONResponse:
    """The live progress, polled by marketer.js."""
    await _campaign(session, campaign_id)
    return JSONResponse(progress_of(await lifecycle.stats(session, campaign_id)), headers=HEADERS)
