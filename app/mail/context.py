"""What every task of a worker process shares: database, sender, rate limiter, a memo."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.ratelimit import GLOBAL_SCOPE, RateLimiter, campaign_scope
from app.core.settings import Settings
from app.mail.identity import SiteIdentity, site_identity
from app.mail.sender import Sender


@dataclass
class EngineContext:
    """Process-wide resources; `memo` is only a cache (compiled content), never a decision."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    sender: Sender
    limiter: RateLimiter
    priority_sender: Sender | None = None
    """Connections of their own for transactional mail, so it never queues behind a campaign."""
    memo: dict[Any, Any] = field(default_factory=dict)

    def site(self) -> SiteIdentity:
        """The names and secret every message is built with."""
        return site_identity(self.settings)

    async def pace(self, campaign_id: int, campaign_rate: float, count: int) -> None:
        """Wait until `count` messages may go under the global and the campaign's rate."""
        if count <= 0:
            return
        await self.limiter.wait(GLOBAL_SCOPE, self.settings.send_rate, count)
        await self.limiter.wait(campaign_scope(campaign_id), campaign_rate, count)
