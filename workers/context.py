"""What every task of a worker process shares: database, sender, rate limiter, compiled campaigns."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Campaign
from app.services.content import prepare_campaign, site_identity
from app.settings import Settings
from campaigns.composer import PreparedCampaign, SiteIdentity
from workers.ratelimit import GLOBAL_SCOPE, RateLimiter, campaign_scope
from workers.sender import Sender


@dataclass
class EngineContext:
    """Process-wide resources; the compiled-campaign cache is only a cache, never a decision."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    sender: Sender
    limiter: RateLimiter
    priority_sender: Sender | None = None
    """Connections of their own for transactional mail, so it never queues behind a campaign."""
    _prepared: dict[tuple[int, object], PreparedCampaign] = field(default_factory=dict)

    def site(self) -> SiteIdentity:
        """The names and secret every message is built with."""
        return site_identity(self.settings)

    async def prepare(self, session: AsyncSession, campaign: Campaign) -> PreparedCampaign:
        """The campaign compiled once per process (and again only if it was edited)."""
        key = (campaign.id, campaign.updated_at)
        if key not in self._prepared:
            self._prepared[key] = await prepare_campaign(session, campaign, self.site())
        return self._prepared[key]

    async def pace(self, campaign_id: int, campaign_rate: float, count: int) -> None:
        """Wait until `count` messages may go under the global and the campaign's rate."""
        if count <= 0:
            return
        await self.limiter.wait(GLOBAL_SCOPE, self.settings.send_rate, count)
        await self.limiter.wait(campaign_scope(campaign_id), campaign_rate, count)
