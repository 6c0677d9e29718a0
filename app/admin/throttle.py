"""Sign-in throttling shared by every API process: failure counters in Redis.

After `admin_login_max_failures` failed sign-ins for one account within the window, the
account is locked for the rest of the window (the right password is refused too); after
`admin_login_ip_max_failures` from one client address, that address is. Counters are Redis
keys with a TTL (INCR, then EXPIRE NX), as the MTA's SMTP AUTH throttle keeps them, under
their own prefix so a console lockout and an SMTP lockout never share a counter.
"""

from __future__ import annotations

import hashlib
import logging

from redis.asyncio import Redis

from app.core.settings import Settings

logger = logging.getLogger(__name__)
KEY_PREFIX = "warta:admin:loginfail:"


def _keys(client: str, email: str) -> tuple[str, str]:
    digest = hashlib.sha256(email.strip().lower().encode("utf-8", "replace")).hexdigest()[:32]
    return f"{KEY_PREFIX}ip:{client}", f"{KEY_PREFIX}user:{digest}"


class LoginThrottle:
    """Counts failed sign-ins per account and per client address."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._account_limit = settings.admin_login_max_failures
        self._client_limit = settings.admin_login_ip_max_failures
        self._window = settings.admin_login_window

    async def locked(self, client: str, email: str) -> bool:
        """Whether the account or the address has used up its failures."""
        client_count, account_count = (
            int(value or 0) for value in await self._redis.mget(list(_keys(client, email)))
        )
        return account_count >= self._account_limit or client_count >= self._client_limit

    async def failed(self, client: str, email: str) -> None:
        """Count one failure against the account and the address."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in _keys(client, email):
                pipe.incr(key)
                pipe.expire(key, self._window, nx=True)
            results = await pipe.execute()
        client_count, account_count = int(results[0]), int(results[2])
        if account_count == self._account_limit or client_count == self._client_limit:
            logger.warning(
                "console sign-in: %d failures for %r or from %s; locked for %d s",
                account_count,
                email[:64],
                client,
                self._window,
            )

    async def succeeded(self, client: str, email: str) -> None:
        """Forget the account's failures after a successful sign-in (the address's stay)."""
        await self._redis.delete(_keys(client, email)[1])
