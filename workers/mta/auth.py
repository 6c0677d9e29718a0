"""SMTP AUTH for the submission listener: the password is a Warta API key.

Applications that submit by SMTP use the same credential as the REST API (any user name,
an API key with `messages:write` or `admin` as the password), as SendGrid and Postmark do.
The protocol calls authenticators synchronously, so the valid key hashes are kept in a cache
refreshed from the database every few seconds; a revoked key stops working within that time.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.api_keys import hash_token, submission_hashes

logger = logging.getLogger(__name__)
REFRESH_EVERY = 10.0
SCOPE = "messages:write"


class ApiKeyAuthenticator:
    """Accepts AUTH PLAIN/LOGIN whose password is a live API key allowed to send."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker
        self._valid: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Reload the hashes of keys that may submit."""
        async with self.sessionmaker() as session:
            self._valid = await submission_hashes(session, SCOPE)

    async def start(self) -> None:
        """Load now, then keep refreshing in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever(), name="smtp-auth-refresh")

    async def stop(self) -> None:
        """Stop refreshing."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def __call__(self, login: str, password: str) -> bool:
        """The protocol's authenticator hook: any login, a live key allowed to send."""
        return hash_token(password) in self._valid

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_EVERY)
            try:
                await self.refresh()
            except Exception:  # keep the last good set while the database is away
                logger.warning("could not refresh SMTP credentials", exc_info=True)
