"""Templates and campaigns in the console: the editor shows an error at its line, the
preview renders for a chosen subscriber, the wizard saves the audience and sends, the
report shows the figures; every change audited, and refused to a viewer by the server."""

from __future__ import annotations

from datetime import timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.events import NewEvent, record_events
from app.models import (
    AdminRole,
    AuditEntry,
    Campaign,
    CampaignList,
    CampaignStatus,
    EventKind,
    MailingList,
    Send,
    SendStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Template,
    utcnow,
)
from tests.helpers.admin import sign_in

HTML = "<p>Hello {{ subscriber.name }}</p>\n<p>{% if %}</p>\n<p>bye</p>"
FIXED = "<p>Hello {{ subscriber.name }}</p>\n<p>See you</p>"


async def _actions(session: AsyncSession) -> list[str]:
    session.expire_all()
    return list(await session.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.id)))


async def _seed(session: AsyncSession) -> tuple[int, int, int]:
    """A list with two confirmed members and a template; their ids."""
    news = MailingList(name="News")
    template = Template(name="Monthly", subject="Hi {{ subscriber.name }}", html=FIXED, text="Hi")
    session.add_all([news, template])
    await session.flush()
    for email, name in [("ada@example.com", "Ada"), ("bob@example.org", "Bob")]:
        person = Subscriber(email=email, name=name)
        session.add(person)
        await session.flush()
        session.add(
            Subscription(
                subscriber_id=person.id, list_id=news.id, status=SubscriptionStatus.confirmed
            )
        )
    ids = (news.id, template.id, person.id)
    await session.commit()
    return ids


async def test_a_syntax_error_is_shown_at_its_line_and_the_fixed_template_is_saved(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    token = await sign_in(console, AdminRole.marketer)
    form = {"csrf": token, "name": "Monthly", "subject": "Hi", "html": HTML, "text": "Hi"}
    broken = await console.post("/admin/templates", data=form)
    assert broken.status_code == 422
    assert "line 2" in broken.text
    assert '<li value="2" class="faulty" aria-current="true"><code>&lt;p&gt;{% if %}' in broken.text
    assert "{% if %}" in broken.text  # the typed source is kept in the editor
    assert await session.scalar(sa.select(sa.func.count()).select_from(Template)) == 0

    saved = await console.post("/admin/templates", data={**form, "html": FIXED})
    assert saved.status_code == 303
    editor = await console.get(saved.headers["location"])
    assert "See you" in editor.text
    assert "frame-src 'self'" in editor.headers["content-security-policy"]
    assert await _actions(session) == ["user.sign_in", "template.create"]


async def test_the_preview_renders_for_a_chosen_subscriber_in_a_sandboxed_document(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    await _seed(session)
    token = await sign_in(console, AdminRole.viewer)
    form = {"csrf": token, "subject": "For {{ subscriber.name }}", "html": FIXED, "text": "x"}
    shown = await console.post(
        "/admin/template-preview", data={**form, "subscriber": "bob@example.org"}
    )
    assert shown.status_code == 200
    assert "For Bob" in shown.text and "Hello Bob" in shown.text
    policy = shown.headers["content-security-policy"]
    assert "sandbox" in policy and "script-src" not in policy
    sample = await console.post("/admin/template-preview", data=form)
    assert "a sample subscriber" in sample.text
    broken = await console.post("/admin/template-preview", data={**form, "html": HTML})
    assert "line 2" in broken.text and 'class="faulty"' in broken.text


async def test_a_viewer_is_refused_every_template_and_campaign_change(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    news_id, template_id, _ = await _seed(session)
    token = await sign_in(console, AdminRole.viewer)
    campaign = {"name": "C", "from_email": "news@example.com", "template_id": str(template_id)}
    for path, data in [
        ("/admin/templates", {"name": "T", "html": FIXED}),
        (f"/admin/templates/{template_id}", {"name": "T", "html": FIXED}),
        ("/admin/campaigns/new", campaign),
    ]:
        response = await console.post(path, data={"csrf": token, **data})
        assert response.status_code == 403, path
    draft = Campaign(
        name="Draft", subject="S", from_email="news@example.com", template_id=template_id
    )
    session.add(draft)
    await session.flush()
    draft_id = draft.id
    await session.commit()
    for path, data in [
        (f"/admin/campaigns/{draft_id}/audience", {"list_ids": str(news_id)}),
        (f"/admin/campaigns/{draft_id}/test", {"addresses": "t@example.com"}),
        (f"/admin/campaigns/{draft_id}/send", {}),
    ]:
        response = await console.post(path, data={"csrf": token, **data})
        assert response.status_code == 403, path
    session.expire_all()
    assert (await session.get(Campaign, draft_id)).status is CampaignStatus.draft  # type: ignore[union-attr]


async def test_the_wizard_counts_the_audience_live_saves_it_and_sends(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    news_id, template_id, _ = await _seed(session)
    token = await sign_in(console, AdminRole.marketer)
    created = await console.post(
        "/admin/campaigns/new",
        data={
            "csrf": token,
            "name": "December",
            "from_email": "News <news@example.com>",
            "template_id": str(template_id),
        },
    )
    assert created.status_code == 303, created.text
    page_path = created.headers["location"].split("#")[0]
    campaign_id = int(page_path.rsplit("/", 1)[1])

    count = await console.post(
        f"{page_path}/audience/count", data={"csrf": token, "list_ids": str(news_id)}
    )
    assert count.json() == {"text": "2 subscribers would receive it now.", "segment": "(none)"}
    segment = '{"attribute": "city", "op": "eq", "value": "Oslo"}'
    narrowed = await console.post(
        f"{page_path}/audience/count",
        data={"csrf": token, "list_ids": str(news_id), "segment": segment},
    )
    assert narrowed.json()["text"] == "0 subscribers would receive it now."
    assert '"city"' in narrowed.json()["segment"]
    bad = await console.post(
        f"{page_path}/audience/count",
        data={"csrf": token, "list_ids": str(news_id), "segment": "{"},
    )
    assert "not JSON" in bad.json()["text"]
    session.expire_all()
    assert await session.scalar(sa.select(sa.func.count()).select_from(CampaignList)) == 0

    saved = await console.post(
        f"{page_path}/audience", data={"csrf": token, "list_ids": str(news_id)}
    )
    assert saved.status_code == 303
    page = await console.get(page_path)
    assert "2 subscribers would receive it now." in page.text
    preview = await console.get(f"{page_path}/preview", params={"subscriber": "ada@example.com"})
    assert "Hello Ada" in preview.text

    sent = await console.post(f"{page_path}/send", data={"csrf": token})
    assert sent.status_code == 303
    session.expire_all()
    campaign = await session.get(Campaign, campaign_id)
    assert campaign is not None and campaign.status is CampaignStatus.scheduled
    progress = await console.get(f"{page_path}/progress.json")
    assert progress.json()["status"] == "scheduled" and progress.json()["done"] is False
    assert (await _actions(session))[-3:] == [
        "campaign.create",
        "campaign.audience",
        "campaign.send",
    ]


async def test_the_report_shows_the_delivered_count_a_chart_and_the_domains(
    console: httpx.AsyncClient, session: AsyncSession
) -> None:
    campaign = Campaign(
        name="Done",
        subject="S",
        from_email="news@example.com",
        html="<p>x</p>",
        status=CampaignStatus.finished,
        audience_size=3,
        started_at=utcnow() - timedelta(days=1),
    )
    session.add(campaign)
    await session.flush()
    campaign_id = campaign.id
    for email, status in [
        ("a@example.com", SendStatus.delivered),
        ("b@example.com", SendStatus.delivered),
        ("c@example.org", SendStatus.bounced),
    ]:
        session.add(Send(campaign_id=campaign_id, email=email, status=status, sent_at=utcnow()))
    await record_events(
        session,
        [NewEvent(kind=EventKind.delivered, campaign_id=campaign_id) for _ in range(2)]
        + [NewEvent(kind=EventKind.opened, campaign_id=campaign_id, data={"machine": False})],
    )
    await session.commit()
    await sign_in(console, AdminRole.viewer)
    report = await console.get(f"/admin/campaigns/{campaign_id}/report")
    assert report.status_code == 200
    delivered = report.text.split('id="delivered-tile"')[1]
    assert '<p class="figure">2</p>' in delivered.split("</div>")[0]
    assert "<polyline" in report.text and "Delivered: total 2" in report.text
    domains = report.text.split('id="domains-heading"')[1]
    assert domains.index("example.com") < domains.index("example.org")
