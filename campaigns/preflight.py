"""The campaign side of the content preflight: build the real message, score it, keep it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Invalid
from app.core.settings import Settings
from app.mail.budget import run_off_loop
from app.mail.identity import site_identity
from app.mail.rendering import RenderError, sample_recipient
from app.mail.sandbox import TemplateError
from app.models import Campaign, PreflightRecord
from app.safety import domains, preflight, records
from app.safety.preflight import PreflightRefused, PreflightReport
from app.safety.rules import RuleOptions
from campaigns.composer import Addressee, PreparedCampaign
from campaigns.content import prepare_campaign

SAMPLE_ROW = 10**15
"""A ledger row number no real send reaches: the sample's tokens name nobody."""


async def check(
    session: AsyncSession,
    settings: Settings,
    campaign: Campaign,
    context: str,
    *,
    prepared: PreparedCampaign | None = None,
) -> PreflightReport:
    """Score the campaign as a sample recipient would receive it, and store the report.

    `prepared` is the campaign compiled by `content.check_renders` in the same request:
    compiling a large body is most of a preflight's CPU, and it need not happen twice."""
    site = site_identity(settings)
    try:
        if prepared is None:
            prepared = await prepare_campaign(session, campaign, site)
        sample = sample_recipient().subscriber
        addressee = Addressee(0, sample.email, sample.name, {})
        raw = await run_off_loop(prepared.build, SAMPLE_ROW, addressee)
    except (RenderError, TemplateError) as exc:
        raise Invalid(f"the campaign does not render: {exc}") from None
    options = RuleOptions(
        unsubscribe_prefixes=(f"{site.public_url}/u/", f"{site.public_url}/p/"),
        click_prefix=f"{site.public_url}/c/",
        link_targets=prepared.compiled.links or (),
        physical_address=settings.preflight_physical_address,
    )
    pending = (
        domains.schedule_findings(settings, campaign.from_email)
        if settings.preflight_domain_checks and context == "schedule"
        else None
    )
    report = await preflight.run(settings, raw, options, pending=pending)
    await records.save(session, report, context=context, campaign_id=campaign.id)
    return report


async def gate(
    session: AsyncSession,
    settings: Settings,
    campaign: Campaign,
    *,
    force: bool,
    prepared: PreparedCampaign | None = None,
) -> PreflightReport:
    """The schedule-time preflight: PreflightRefused (409) above the maximum unless `force`."""
    report = await check(session, settings, campaign, "schedule", prepared=prepared)
    if report.passed:
        return report
    if not force:
        # The refusal's report is what the sender reads next: keep it despite the 409.
        await session.commit()
        raise PreflightRefused(report)
    await records.save(session, report, context="schedule", campaign_id=campaign.id, forced=True)
    return report


async def stored(session: AsyncSession, campaign_id: int) -> PreflightRecord | None:
    """The campaign's last stored preflight, if it had one."""
    return await records.latest_for_campaign(session, campaign_id)
