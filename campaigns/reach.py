"""Who a campaign reaches: the size of its audience now, and its recipients by domain.

For the console's campaign wizard (the live audience count) and report (top recipient
domains and where their mail is), over the same audience rules and ledger as sending.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience.segments import segment_filter
from app.models import Campaign, Send, Subscriber
from campaigns.audience import audience_filter

TOP_DOMAINS = 10


async def audience_count(session: AsyncSession, campaign: Campaign) -> int:
    """How many subscribers the campaign would go to if it were sent now."""
    segment = segment_filter(campaign.segment) if campaign.segment else None
    count = await session.scalar(
        sa.select(sa.func.count())
        .select_from(Subscriber)
        .where(*audience_filter(campaign.id, segment))
    )
    return int(count or 0)


@dataclass
class DomainState:
    """One recipient domain of a campaign: its ledger rows per status."""

    domain: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Recipients at this domain."""
        return sum(self.counts.values())


async def top_domains(
    session: AsyncSession, campaign_id: int, limit: int = TOP_DOMAINS
) -> list[DomainState]:
    """The campaign's `limit` largest recipient domains with their ledger statuses."""
    dialect = session.get_bind().dialect.name
    at = (
        sa.func.strpos(Send.email, "@")
        if dialect == "postgresql"
        else sa.func.instr(Send.email, "@")
    )
    domain = sa.func.lower(sa.func.substr(Send.email, at + 1)).label("domain")
    biggest = (
        sa.select(domain)
        .where(Send.campaign_id == campaign_id, at > 0)
        .group_by(domain)
        .order_by(sa.func.count().desc(), domain)
        .limit(limit)
    )
    names = [row[0] for row in await session.execute(biggest)]
    if not names:
        return []
    rows = await session.execute(
        sa.select(domain, Send.status, sa.func.count())
        .where(Send.campaign_id == campaign_id, at > 0, domain.in_(names))
        .group_by(domain, Send.status)
    )
    states = {name: DomainState(name) for name in names}
    for name, status, count in rows:
        states[name].counts[str(status)] = int(count)
    return [states[name] for name in names]
