"""List sizes for overview pages: exact for small lists, estimated from a sample for big ones.

Counting a list of a million members reads a million index entries (hundreds of ms); the
lists page shows every list at once. On PostgreSQL a block sample of `subscriptions`
(`TABLESAMPLE SYSTEM`, ~20,000 rows, a few ms) estimates each list; lists the sample puts under
`EXACT_UP_TO` members are then counted exactly, the others are shown as estimates (the page
says so). SQLite installations are small: counted exactly. Where a figure must be exact
(the API's counts, a campaign's audience) use `app.audience.lists.member_counts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience import lists
from app.models import Subscription

EXACT_UP_TO = 100_000
"""Members a list may have and still be counted exactly on an overview page."""
SAMPLE_ROWS = 20_000
"""About how many memberships the sample reads (at least 1 % of the table)."""
SIGNIFICANT_DIGITS = 2
"""An estimate is rounded so that it does not look more precise than it is."""


@dataclass(frozen=True)
class ListSizes:
    """Members per list and subscription status; `estimated` names the lists whose counts
    are estimates."""

    counts: dict[int, dict[str, int]]
    estimated: frozenset[int] = field(default_factory=frozenset)


def rounded(value: float) -> int:
    """`value` to SIGNIFICANT_DIGITS significant digits (1,234,567 → 1,200,000)."""
    if value < 1:
        return 0
    digits = len(str(int(value)))
    return int(round(value, SIGNIFICANT_DIGITS - digits))


async def member_counts(
    session: AsyncSession, list_ids: list[int], exact_up_to: int | None = None
) -> ListSizes:
    """Members per list and status: exact up to `exact_up_to` (EXACT_UP_TO) members, else
    estimated."""
    exact_up_to = EXACT_UP_TO if exact_up_to is None else exact_up_to
    if not list_ids or session.get_bind().dialect.name != "postgresql":
        return ListSizes(await lists.member_counts(session, list_ids))
    rows = int(
        await session.scalar(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = 'subscriptions'::regclass")
        )
        or 0
    )
    if rows < exact_up_to:  # also -1: never analysed
        return ListSizes(await lists.member_counts(session, list_ids))
    percent = min(100.0, max(1.0, 100.0 * SAMPLE_ROWS / rows))
    table = sa.tablesample(Subscription, sa.func.system(percent), name="sampled")
    sampled = await session.execute(
        sa.select(table.c.list_id, table.c.status, sa.func.count()).group_by(
            table.c.list_id, table.c.status
        )
    )
    found = [(list_id, str(status), int(count)) for list_id, status, count in sampled]
    total = sum(count for _, _, count in found)
    scale = rows / total if total else 0.0
    estimates: dict[int, dict[str, int]] = {}
    for list_id, status, count in found:
        if list_id in list_ids:
            estimates.setdefault(list_id, {})[status] = rounded(count * scale)
    big = {list_id for list_id, counts in estimates.items() if sum(counts.values()) > exact_up_to}
    exact = await lists.member_counts(session, [i for i in list_ids if i not in big])
    return ListSizes(exact | {list_id: estimates[list_id] for list_id in big}, frozenset(big))
