"""List sizes on the console: big lists are estimated from a sample (and the page says so),
small ones counted exactly; SQLite counts everything exactly."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience import list_sizes
from app.models import AdminRole, MailingList, Subscriber, Subscription, SubscriptionStatus
from tests.helpers.admin import sign_in

BIG, SMALL = 3000, 40


async def _seed(session: AsyncSession) -> tuple[int, int]:
    big, small = MailingList(name="big"), MailingList(name="small")
    session.add_all([big, small])
    await session.flush()
    await session.execute(
        sa.insert(Subscriber), [{"email": f"u{i}@example.com", "name": ""} for i in range(BIG)]
    )
    ids = list(await session.scalars(sa.select(Subscriber.id).order_by(Subscriber.id)))
    rows = [
        {
            "subscriber_id": sid,
            "list_id": big.id,
            "status": SubscriptionStatus.unsubscribed
            if n % 10 == 0
            else SubscriptionStatus.confirmed,
        }
        for n, sid in enumerate(ids)
    ] + [
        {"subscriber_id": sid, "list_id": small.id, "status": SubscriptionStatus.confirmed}
        for sid in ids[:SMALL]
    ]
    await session.execute(sa.insert(Subscription), rows)
    await session.commit()
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(sa.text("ANALYZE subscriptions"))
    return big.id, small.id


async def test_big_lists_are_estimated_and_small_ones_counted(session: AsyncSession) -> None:
    big, small = await _seed(session)
    sizes = await list_sizes.member_counts(session, [big, small], exact_up_to=1000)
    assert sizes.counts[small] == {"confirmed": SMALL}
    if session.get_bind().dialect.name != "postgresql":
        assert sizes.estimated == frozenset()
        assert sizes.counts[big] == {"confirmed": 2700, "unsubscribed": 300}
        return
    assert sizes.estimated == {big}
    # A table this small is sampled whole: the estimate is the count, rounded.
    assert sizes.counts[big] == {"confirmed": 2700, "unsubscribed": 300}
    exact = await list_sizes.member_counts(session, [big, small], exact_up_to=10_000)
    assert exact.estimated == frozenset()


def test_estimates_are_rounded_to_two_significant_digits() -> None:
    assert list_sizes.rounded(1_234_567) == 1_200_000
    assert list_sizes.rounded(98_765.4) == 99_000
    assert list_sizes.rounded(42) == 42
    assert list_sizes.rounded(0.4) == 0


async def test_the_lists_page_says_which_counts_are_estimates(
    console: httpx.AsyncClient, session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    big, small = await _seed(session)
    monkeypatch.setattr(list_sizes, "EXACT_UP_TO", 1000)
    await sign_in(console, AdminRole.viewer)
    page = (await console.get("/admin/lists")).text
    one = (await console.get(f"/admin/lists/{big}")).text
    if session.get_bind().dialect.name != "postgresql":
        assert "estimated" not in page and "2,700 confirmed" in one
        return
    assert "≈ 2,700" in page and "estimated from a sample" in page
    assert "about 2,700 confirmed" in one and "estimated from a sample" in one
    small_page = (await console.get(f"/admin/lists/{small}")).text
    assert "40 confirmed" in small_page and "estimated" not in small_page
