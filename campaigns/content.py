"""A campaign's content made ready to send: loaded, compiled, and checked against recipients."""

from __future__ import annotations

import email
import email.policy
import functools
from dataclasses import dataclass
from email.message import EmailMessage

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience.segments import segment_filter
from app.core.errors import Invalid
from app.core.settings import Settings
from app.mail.budget import MAX_COMPILE_SECONDS, run_off_loop
from app.mail.context import EngineContext
from app.mail.identity import SiteIdentity, mailbox, preview_identity, site_identity
from app.mail.rendering import (
    CompiledCampaign,
    Recipient,
    RenderedMessage,
    RenderError,
    SubscriberView,
    compile_campaign,
    render,
    sample_recipient,
    validate,
)
from app.mail.sandbox import TemplateError
from app.models import Campaign, CampaignList, MailingList, Subscriber, Template
from campaigns import links as links_repository
from campaigns.audience import audience_filter
from campaigns.composer import Addressee, PreparedCampaign

VALIDATION_SAMPLE = 50


@dataclass(frozen=True, slots=True)
class _Source:
    id: int
    name: str
    subject: str
    html: str
    text: str


async def prepare_campaign(
    session: AsyncSession, campaign: Campaign, site: SiteIdentity
) -> PreparedCampaign:
    """Load the content (inline or template) and list, and compile it."""
    subject, html, text = campaign.subject, campaign.html, campaign.text
    if campaign.template_id is not None:
        template = await session.get(Template, campaign.template_id)
        if template is not None:
            html, text = template.html or html, template.text or text
            subject = campaign.subject or template.subject
    first_list = (
        await session.execute(
            sa.select(MailingList.id, MailingList.name)
            .join(CampaignList, CampaignList.list_id == MailingList.id)
            .where(CampaignList.campaign_id == campaign.id)
            .order_by(MailingList.id)
            .limit(1)
        )
    ).first()
    list_id, list_name = (first_list[0], first_list[1]) if first_list else (0, None)
    # Off the event loop: compiling a large body takes seconds.
    compiled = await run_off_loop(
        functools.partial(compile_campaign, track=campaign.tracking),
        _Source(campaign.id, campaign.name, subject, html, text),
        seconds=MAX_COMPILE_SECONDS,
    )
    return PreparedCampaign(
        campaign_id=campaign.id,
        compiled=compiled,
        sender=mailbox(campaign.from_email),
        reply_to=mailbox(campaign.reply_to) if campaign.reply_to else None,
        list_name=list_name,
        list_id=f"list{list_id}.{site.hostname}",
        rate=campaign.rate or 0.0,
        site=site,
        track_replies=campaign.track_replies,
    )


async def check_renders(
    session: AsyncSession, settings: Settings, campaign: Campaign
) -> PreparedCampaign:
    """Render for a sample and the first audience members; any failure is Invalid (422).
    Returns the compiled campaign, for the preflight that follows to reuse.

    This is where an undefined variable or a sandbox violation is caught: when the campaign
    is scheduled, not half-way through the send. The renders run off the event loop, within
    one render budget (`app.mail.budget`).
    """
    site = site_identity(settings)
    try:
        prepared = await prepare_campaign(session, campaign, site)
    except (RenderError, TemplateError) as exc:
        raise Invalid(f"the campaign does not render: {exc}") from None
    segment = segment_filter(campaign.segment) if campaign.segment else None
    members = await session.scalars(
        sa.select(Subscriber)
        .where(*audience_filter(campaign.id, segment))
        .order_by(Subscriber.id)
        .limit(VALIDATION_SAMPLE)
    )
    sample = [
        (member.email, prepared.recipient(member.id, SubscriberView.from_model(member)))
        for member in members
    ]
    await run_off_loop(_validate_all, prepared.compiled, sample)
    return prepared


def _validate_all(compiled: CompiledCampaign, sample: list[tuple[str, Recipient]]) -> None:
    try:
        validate(compiled)
    except (RenderError, TemplateError) as exc:
        raise Invalid(f"the campaign does not render: {exc}") from None
    for email_address, recipient in sample:
        try:
            validate(compiled, recipient)
        except RenderError as exc:
            raise Invalid(
                f"the campaign does not render for {email_address}: {exc} "
                "(use the default filter for attributes some subscribers lack)"
            ) from None


@dataclass(frozen=True, slots=True)
class Preview:
    """A campaign as one recipient would receive it."""

    headers: list[tuple[str, str]]
    subject: str
    html: str | None
    text: str


async def preview(
    session: AsyncSession, settings: Settings, campaign: Campaign, subscriber: Subscriber | None
) -> Preview:
    """Build the message for `subscriber` (or a sample) and read it back; its links, tokens,
    Message-ID and return path are signed with the preview-only secret, so none acts."""
    site = preview_identity(site_identity(settings))
    try:
        prepared = await prepare_campaign(session, campaign, site)
        if subscriber is None:
            sample = sample_recipient().subscriber
            addressee = Addressee(0, sample.email, sample.name, dict(sample.attributes))
        else:
            addressee = Addressee(
                subscriber.id, subscriber.email, subscriber.name, dict(subscriber.attributes)
            )
        data = await run_off_loop(prepared.build, 0, addressee)
    except (RenderError, TemplateError) as exc:
        raise Invalid(f"the campaign does not render: {exc}") from None
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    html_part = message.get_body(("html",))
    text_part = message.get_body(("plain",))
    return Preview(
        headers=[(name, str(value)) for name, value in message.items()],
        subject=str(message["Subject"]),
        html=html_part.get_content() if isinstance(html_part, EmailMessage) else None,
        text=text_part.get_content() if isinstance(text_part, EmailMessage) else "",
    )


async def store_tracked_links(
    session: AsyncSession, campaign: Campaign, settings: Settings
) -> None:
    """Record the links of a tracked campaign, so its click redirects can resolve them."""
    if not campaign.tracking:
        return
    prepared = await prepare_campaign(session, campaign, site_identity(settings))
    await links_repository.store(session, campaign.id, prepared.compiled.links or ())


async def web_view(
    session: AsyncSession, settings: Settings, campaign: Campaign, subscriber: Subscriber
) -> RenderedMessage:
    """The campaign rendered for `subscriber`, untracked: the "view in browser" page.

    Tracked campaigns keep their original links here, and no open pixel.
    """
    prepared = await prepare_campaign(session, campaign, site_identity(settings))
    recipient = prepared.recipient(subscriber.id, SubscriberView.from_model(subscriber))
    try:
        return await run_off_loop(render, prepared.compiled, recipient)
    except RenderError as exc:
        raise Invalid(f"the campaign does not render: {exc}") from None


async def prepared(
    engine: EngineContext, session: AsyncSession, campaign: Campaign
) -> PreparedCampaign:
    """The campaign compiled once per process (and again only if it was edited)."""
    key = ("campaign", campaign.id, campaign.updated_at)
    if key not in engine.memo:
        engine.memo[key] = await prepare_campaign(session, campaign, engine.site())
    compiled: PreparedCampaign = engine.memo[key]
    return compiled
