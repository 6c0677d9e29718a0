"""API keys: issue, authenticate, scope checks; only SHA-256 hashes are stored.

A token Warta makes is `wk_<public id>_<secret>`: eight hex characters that name the key
(stored as `prefix`, safe to show) and 32 random bytes. Only the SHA-256 of the whole token
is stored, unsalted and unpeppered on purpose: a 256-bit random secret cannot be guessed
from its hash, as with GitHub's and Stripe's keys, and a pepper from WARTA_SECRET_KEY would
tie every key to that secret, so rotating it (the only way to revoke mailed links) would
revoke every API key too. Chosen tokens (WARTA_BOOTSTRAP_API_KEY) must carry at least 32
characters after `wk_` for the same reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
import weakref
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from app.core import audit
from app.core.errors import Invalid, NotFound
from app.models import AdminUser, ApiKey, utcnow

RESOURCES = (
    "lists",
    "subscribers",
    "templates",
    "campaigns",
    "suppressions",
    "messages",
    "queue",
    "bounces",
    "webhooks",
    "inbound",
)
READ_ONLY_SCOPES = ("metrics:read",)
"""Scopes with no write side: `metrics:read` lets a Prometheus scraper read /metrics only."""
SCOPES = frozenset(
    {"admin", *READ_ONLY_SCOPES}
    | {f"{res}:{act}" for res in RESOURCES for act in ("read", "write")}
)
TOKEN_PREFIX = "wk_"
SECRET_BYTES = 32
MIN_CHOSEN_SECRET = 32
"""Characters a chosen token needs after `wk_` (or `wk_<public id>_`)."""
MIN_DISTINCT_CHARACTERS = 8
"""A random 32-character token has far more; fewer means a repeated word, not randomness."""
_PUBLIC_ID = re.compile(r"wk_[0-9a-f]{8}_")
_TOUCH_INTERVAL = timedelta(minutes=1)
MANAGE_SCOPE = "admin"
"""Who may list, create and revoke keys: a key or a console role holding `admin`."""
MAX_NAME = 200


def new_token() -> str:
    """A fresh `wk_<public id>_<secret>` token: 8 hex characters, then 32 random bytes."""
    return f"{TOKEN_PREFIX}{secrets.token_hex(4)}_{secrets.token_urlsafe(SECRET_BYTES)}"


def public_prefix(token: str) -> str:
    """What may be stored and shown of a token: `wk_<public id>`, or "" if it has none.

    Chosen tokens and those issued before revision 0007 have no public part.
    """
    found = _PUBLIC_ID.match(token)
    return found.group()[:-1] if found else ""


def weakness(token: str) -> str | None:
    """Why a chosen token is too weak to be an API key, or None if it is strong enough."""
    found = _PUBLIC_ID.match(token)
    secret = token[found.end() :] if found else token.removeprefix(TOKEN_PREFIX)
    advice = (
        "generate one: python3 -c 'import secrets; "
        f'print("{TOKEN_PREFIX}" + secrets.token_urlsafe({SECRET_BYTES}))\''
    )
    if len(secret) < MIN_CHOSEN_SECRET:
        return (
            f"an API key needs at least {MIN_CHOSEN_SECRET} random characters after "
            f"'{TOKEN_PREFIX}' (this one has {len(secret)}); {advice}"
        )
    if len(set(secret)) < MIN_DISTINCT_CHARACTERS:
        return f"an API key must be random, not a repeated word; {advice}"
    return None


def hash_token(token: str) -> str:
    """The stored form of a token (tokens are long and random, so a plain hash suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_scopes(scopes: list[str]) -> list[str]:
    """Refuse unknown scope names with a message listing the known ones."""
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise Invalid(f"unknown scopes {unknown}; known: {', '.join(sorted(SCOPES))}")
    return sorted(set(scopes))


def allows(scopes: list[str], needed: str) -> bool:
    """admin allows all; `x:write` implies `x:read`."""
    if "admin" in scopes or needed in scopes:
        return True
    resource, _, action = needed.partition(":")
    return action == "read" and f"{resource}:write" in scopes


async def create_key(
    session: AsyncSession,
    name: str,
    scopes: list[str],
    token: str | None = None,
    *,
    actor: AdminUser | str | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key; returns it with the token, which is never retrievable again. With
    `actor` (a console user, or an API key's name), the creation is audited."""
    token = token or new_token()
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise Invalid(f"a key needs a name of 1 to {MAX_NAME} printable characters on one line")
    if not scopes:
        raise Invalid("a key needs at least one scope")
    key = ApiKey(
        name=name,
        prefix=public_prefix(token),
        token_hash=hash_token(token),
        scopes=check_scopes(scopes),
    )
    session.add(key)
    await session.flush()
    if actor is not None:
        details = {"name": key.name, "prefix": key.prefix, "scopes": key.scopes}
        await audit.record(session, actor, "api_key.create", f"api_key:{key.id}", details)
    return key, token


async def authenticate(session: AsyncSession, token: str) -> ApiKey | None:
    """The live key for a token, touching `last_used_at` at most once a minute.

    The touch is left unflushed: the caller commits only when there is one (`session.dirty`),
    so most requests pay one SELECT for authentication and no write.
    """
    key = await session.scalar(
        sa.select(ApiKey).where(ApiKey.token_hash == hash_token(token), ApiKey.revoked_at.is_(None))
    )
    if key is not None:
        now = utcnow()
        if key.last_used_at is None or now - key.last_used_at > _TOUCH_INTERVAL:
            key.last_used_at = now
    return key


async def ensure_key(session: AsyncSession, token: str, name: str) -> ApiKey:
    """Make sure an admin key with exactly this token exists (bootstrap and dev keys)."""
    if reason := weakness(token):
        raise Invalid(reason)
    existing = await session.scalar(sa.select(ApiKey).where(ApiKey.token_hash == hash_token(token)))
    if existing is not None:
        existing.revoked_at = None
        if "admin" not in existing.scopes:
            existing.scopes = ["admin"]
        await session.flush()
        return existing
    key, _ = await create_key(session, name, ["admin"], token=token)
    return key


async def submission_hashes(session: AsyncSession, scope: str) -> frozenset[str]:
    """Hashes of the live keys whose scopes allow `scope` (the MTA's SMTP AUTH reloads these)."""
    rows = await session.execute(
        sa.select(ApiKey.token_hash, ApiKey.scopes).where(ApiKey.revoked_at.is_(None))
    )
    return frozenset(token for token, scopes in rows if allows(scopes, scope))


async def page(session: AsyncSession, after_id: int = 0, limit: int = 100) -> list[ApiKey]:
    """Keys in id order after `after_id` (keyset), revoked ones included."""
    query = sa.select(ApiKey).where(ApiKey.id > after_id).order_by(ApiKey.id).limit(limit)
    return list(await session.scalars(query))


async def get_key(session: AsyncSession, key_id: int) -> ApiKey:
    """One key by id, or NotFound."""
    key = await session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no API key {key_id}")
    return key


async def revoke(
    session: AsyncSession, key_id: int, *, actor: AdminUser | str | None = None
) -> ApiKey:
    """Revoke a key for good: once committed it stops authenticating (within
    AUTH_CACHE_SECONDS in other processes). Revoking twice changes nothing.

    The row is kept (name, prefix, dates) so the console and the audit log can still name it.
    With `actor`, the revocation is audited.
    """
    key = await get_key(session, key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.flush()
    if actor is not None:
        details = {"name": key.name, "prefix": key.prefix}
        await audit.record(session, actor, "api_key.revoke", f"api_key:{key.id}", details)
    return key


# Authentication cache (transactional performance): a key verified a moment ago is trusted
# for AUTH_CACHE_SECONDS without asking the database again.
AUTH_CACHE_SECONDS = 2.0
"""How long a verified key is trusted without a query: a key revoked in another process is
refused everywhere within this time (as its revocation commits, in the process that made it)."""
AUTH_CACHE_SIZE = 1024
_Found = tuple[int, str, list[str]]
"""(key id, name, scopes) of a live key: what a request needs of it."""


class _Cache:
    """The keys verified lately through one sessionmaker, and the lookups under way."""

    def __init__(self) -> None:
        self.verified: dict[str, tuple[float, _Found]] = {}
        """token hash → (monotonic expiry, the key)"""
        self.lookups: dict[tuple[str, int], asyncio.Task[_Found | None]] = {}
        """(token hash, generation) → the query under way: requests that miss together (a
        burst when an entry expires) share one query instead of one connection each."""


_caches: weakref.WeakKeyDictionary[object, _Cache] = weakref.WeakKeyDictionary()
"""One cache per sessionmaker (its database): an id is only meaningful where it came from."""
_generation = 0
"""Bumped at every forget: a lookup that began before a change does not cache its answer,
and no request begun after the change joins it."""
_clock = time.monotonic
_CHANGED = "warta.api_key_changed"
"""The session's info flag: it changed a key, so its commit forgets the verified keys."""


async def authenticate_cached(
    sessionmaker: async_sessionmaker[AsyncSession], token: str
) -> ApiKey | None:
    """`authenticate` in a session of its own (only on a miss), answered from memory for a key
    verified less than AUTH_CACHE_SECONDS ago.

    The answer is a transient copy (id, name, scopes): enough to check scopes and name the
    key; `last_used_at` is touched (and committed) on a miss, at most once a minute as before.
    """
    cache = _caches.setdefault(sessionmaker, _Cache())
    digest = hash_token(token)
    hit = cache.verified.get(digest)
    if hit is not None and hit[0] > _clock():
        found: _Found | None = hit[1]
    else:
        generation = _generation
        lookup = cache.lookups.get((digest, generation))
        if lookup is None:
            lookup = asyncio.create_task(_look_up(sessionmaker, cache, token, digest, generation))
            cache.lookups[digest, generation] = lookup
            lookup.add_done_callback(lambda _: cache.lookups.pop((digest, generation), None))
        # A request cancelled meanwhile leaves the lookup to the others that wait for it.
        found = await asyncio.shield(lookup)
    if found is None:
        return None
    return ApiKey(id=found[0], name=found[1], scopes=list(found[2]))


async def _look_up(
    sessionmaker: async_sessionmaker[AsyncSession],
    cache: _Cache,
    token: str,
    digest: str,
    generation: int,
) -> _Found | None:
    async with sessionmaker() as session:
        key = await authenticate(session, token)
        found = None if key is None else (key.id, key.name, list(key.scopes))
        if session.dirty:  # the once-a-minute last_used_at touch
            await session.commit()
    if found is None:
        cache.verified.pop(digest, None)
    elif generation == _generation:  # else a key changed meanwhile: what was read may be old
        if len(cache.verified) >= AUTH_CACHE_SIZE:
            cache.verified.clear()  # many keys in a short time: start over rather than track age
        cache.verified[digest] = (_clock() + AUTH_CACHE_SECONDS, found)
    return found


def _forget() -> None:
    global _generation
    _generation += 1
    for cache in list(_caches.values()):
        cache.verified.clear()


@event.listens_for(ApiKey, "after_update")
@event.listens_for(ApiKey, "after_delete")
def _forget_verified(_mapper: object, _connection: object, key: ApiKey) -> None:
    """A key changed through this process (revoked, scopes edited): verify every key again
    once the change commits (until then every other transaction still reads the old row,
    and a lookup under way at the commit is not cached: `_generation`).

    The once-a-minute `last_used_at` touch is no change that matters here.
    """
    state = sa.inspect(key)
    # A value given as SQL (revoked_at = now()) leaves no history here: anything but the
    # touch alone counts as a change.
    changed = {attr.key for attr in state.attrs if attr.history.has_changes()}
    if changed != {"last_used_at"} or state.deleted:
        if (session := state.session) is not None:
            session.info[_CHANGED] = True
        else:
            _forget()


@event.listens_for(Session, "after_commit")
def _forget_committed(session: Session) -> None:
    """The commit of a session that changed a key: forget what was verified meanwhile."""
    if session.info.pop(_CHANGED, False):
        _forget()


@event.listens_for(Session, "after_rollback")
def _drop_flag(session: Session) -> None:
    session.info.pop(_CHANGED, None)
