"""The visual segment builder: rows become the API's JSON segment and back; in the campaign
wizard the live count follows the rows, and without JavaScript the form posts them."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import BrowserContext, expect
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.pages.segment_builder import Row, to_rows, to_segment
from app.audience.segments import validate_segment
from app.models import (
    AdminRole,
    Campaign,
    CampaignList,
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Template,
)
from tests.helpers.admin import assert_accessible, browser_sign_in, sign_in


def test_rows_become_the_segment_language_with_typed_values() -> None:
    rows = [
        Row("attribute", "city", "eq", "Oslo"),
        Row("attribute", "age", "gte", "30"),
        Row("attribute", "vip", "exists", "true"),
        Row("attribute", "zip", "eq", '"0150"'),
        Row("attribute", "plan.tier", "in", "gold, silver"),
        Row("email", "", "contains", "@example.com"),
        Row("attribute", "", "eq", "ignored: no attribute named"),
        Row("name", "", "eq", ""),  # empty: not a condition
    ]
    segment = to_segment("any", rows)
    assert segment == {
        "any": [
            {"attribute": "city", "op": "eq", "value": "Oslo"},
            {"attribute": "age", "op": "gte", "value": 30},
            {"attribute": "vip", "op": "exists", "value": True},
            {"attribute": "zip", "op": "eq", "value": "0150"},
            {"attribute": "plan.tier", "op": "in", "value": ["gold", "silver"]},
            {"field": "email", "op": "contains", "value": "@example.com"},
        ]
    }
    assert validate_segment(segment) is not None  # the API's own parser accepts it
    assert to_segment("all", [Row()]) is None


def test_a_stored_segment_comes_back_as_the_same_rows() -> None:
    rows = [
        Row("attribute", "city", "eq", "Oslo"),
        Row("attribute", "zip", "eq", '"0150"'),
        Row("attribute", "plan.tier", "in", "gold, silver"),
        Row("status", "", "eq", "enabled"),
    ]
    segment = to_segment("all", rows)
    assert to_rows(segment) == ("all", rows)
    assert to_segment(*to_rows(segment)) == segment  # type: ignore[misc]
    nested = {"all": [{"not": {"attribute": "city", "op": "eq", "value": "Oslo"}}]}
    assert to_rows(nested) is None  # shown as JSON instead


@pytest.fixture
async def draft(session: AsyncSession) -> int:
    """A draft to a list of two: Ada in Oslo, Bob in Rome."""
    news = MailingList(name="News")
    template = Template(name="T", subject="S", html="<p>Hi</p>", text="Hi")
    session.add_all([news, template])
    await session.flush()
    for email, city in [("ada@example.com", "Oslo"), ("bob@example.com", "Rome")]:
        person = Subscriber(email=email, attributes={"city": city})
        session.add(person)
        await session.flush()
        session.add(
            Subscription(
                subscriber_id=person.id, list_id=news.id, status=SubscriptionStatus.confirmed
            )
        )
    campaign = Campaign(name="C", subject="S", from_email="n@example.com", template_id=template.id)
    session.add(campaign)
    await session.flush()
    session.add(CampaignList(campaign_id=campaign.id, list_id=news.id))
    campaign_id = campaign.id
    await session.commit()
    return campaign_id


async def test_the_builder_posts_without_javascript_and_the_segment_is_kept(
    console: httpx.AsyncClient, session: AsyncSession, draft: int
) -> None:
    token = await sign_in(console, AdminRole.marketer)
    page = await console.get(f"/admin/campaigns/{draft}")
    list_id = page.text.split('name="list_ids" value="')[1].split('"')[0]
    rows = {
        "csrf": token,
        "list_ids": list_id,
        "match": "all",
        "rule_subject": ["attribute", "attribute", "attribute"],
        "rule_attribute": ["city", "", ""],
        "rule_op": ["eq", "eq", "eq"],
        "rule_value": ["Oslo", "", ""],
    }
    count = await console.post(f"/admin/campaigns/{draft}/audience/count", data=rows)
    assert count.json()["text"] == "1 subscribers would receive it now."
    assert '"city"' in count.json()["segment"]
    saved = await console.post(f"/admin/campaigns/{draft}/audience", data=rows)
    assert saved.status_code == 303
    session.expire_all()
    stored = await session.get(Campaign, draft)
    assert stored is not None
    assert stored.segment == {"all": [{"attribute": "city", "op": "eq", "value": "Oslo"}]}
    again = await console.get(f"/admin/campaigns/{draft}")
    assert 'name="rule_attribute" maxlength="200" value="city"' in again.text
    assert "1 subscribers would receive it now." in again.text


async def test_the_builder_in_the_browser_counts_live_and_adds_conditions(
    live_console: str, browser_context: BrowserContext, draft: int
) -> None:
    page = await browser_context.new_page()
    await browser_sign_in(page, live_console, AdminRole.marketer)
    await page.goto(f"{live_console}/admin/campaigns/{draft}")
    await page.get_by_label("News").check()
    await expect(page.locator("#reach")).to_have_text("2 subscribers would receive it now.")
    await page.locator("#b-attribute-1").fill("city")
    await page.locator("#b-value-1").fill("Rome")
    await expect(page.locator("#reach")).to_have_text("1 subscribers would receive it now.")
    await expect(page.locator("#segment-json")).to_contain_text('"Rome"')
    await page.get_by_role("button", name="Add a condition").click()
    await expect(page.get_by_label("Condition 4: on")).to_be_focused()
    await page.locator("#b-attribute-4").fill("city")
    await page.locator("#b-op-4").select_option("ne")
    await page.locator("#b-value-4").fill("Rome")
    await expect(page.locator("#reach")).to_have_text("0 subscribers would receive it now.")
    await assert_accessible(page)
