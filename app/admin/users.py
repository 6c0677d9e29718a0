"""Console users: creation, sign-in checks and the second factor."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin import passwords, totp
from app.core.errors import Conflict, Invalid, NotFound
from app.models import AdminRole, AdminUser, utcnow

# The address is a login name here, not a mailbox Warta sends to: `admin@localhost` is fine.
_LOGIN = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}")


async def create_user(
    session: AsyncSession, email: str, role: AdminRole, password: str
) -> AdminUser:
    """Add a user; refuses a weak password or an address already in use."""
    address = email.strip().lower()
    if not _LOGIN.fullmatch(address):
        raise Invalid(f"{email!r} is not an email address")
    if reason := passwords.weakness(password):
        raise Invalid(reason)
    if await by_email(session, address) is not None:
        raise Conflict(f"a console user {address} exists already")
    user = AdminUser(
        email=address, role=role, password_hash=await passwords.hash_password(password)
    )
    session.add(user)
    await session.flush()
    return user


async def by_email(session: AsyncSession, email: str) -> AdminUser | None:
    """The user with this address (case-insensitive), if any."""
    return await session.scalar(
        sa.select(AdminUser).where(AdminUser.email == email.strip().lower())
    )


@dataclass(frozen=True)
class SignInCheck:
    """The outcome of checking credentials: the user when they are right."""

    user: AdminUser | None
    needs_code: bool = False


async def check_credentials(
    session: AsyncSession, email: str, password: str, code: str, secret_key: str
) -> SignInCheck:
    """Check password and (when enrolled) the TOTP code; the caller commits the used step.

    `secret_key` opens the sealed TOTP secret (see app.admin.totp)."""
    user = await by_email(session, email) if len(email) <= 320 else None
    good = await passwords.verify(user.password_hash if user else None, password)
    if user is None or not good or user.disabled_at is not None:
        return SignInCheck(None)
    if user.totp_secret:
        if not code:
            return SignInCheck(None, needs_code=True)
        secret = totp.unseal(user.totp_secret, secret_key, user.id)
        step = totp.matching_step(secret, code, user.totp_last_step) if secret else None
        if secret is None or step is None:
            return SignInCheck(None, needs_code=True)
        user.totp_last_step = step
        if not user.totp_secret.startswith(totp.SEALED):
            # Stored before 0012 and left plain by it (no WARTA_SECRET_KEY there): seal it
            # now, with the key this app opens it with.
            user.totp_secret = totp.seal(secret, secret_key, user.id)
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = await passwords.hash_password(password)
    user.last_login_at = utcnow()
    return SignInCheck(user)


async def enrol_totp(user: AdminUser, secret: str, code: str, secret_key: str) -> bool:
    """Turn the second factor on once the user proves their app shows the right codes."""
    step = totp.matching_step(secret, code, 0)
    if step is None:
        return False
    user.totp_secret = totp.seal(secret, secret_key, user.id)
    user.totp_last_step = step
    return True


def totp_code_matches(user: AdminUser, code: str, secret_key: str) -> bool:
    """Whether `code` is a current code of the user's second factor (to turn it off)."""
    secret = totp.unseal(user.totp_secret, secret_key, user.id) if user.totp_secret else None
    return secret is not None and totp.matching_step(secret, code, 0) is not None


def disable_totp(user: AdminUser) -> None:
    """Turn the second factor off (password only from now on)."""
    user.totp_secret, user.totp_last_step = None, 0


async def all_users(session: AsyncSession) -> list[AdminUser]:
    """Every console user, by address."""
    return list(await session.scalars(sa.select(AdminUser).order_by(AdminUser.email)))


async def get_user(session: AsyncSession, user_id: int) -> AdminUser:
    """One user, or NotFound."""
    user = await session.get(AdminUser, user_id)
    if user is None:
        raise NotFound(f"console user {user_id} does not exist")
    return user


def set_disabled(user: AdminUser, disabled: bool) -> None:
    """Disable (no sign-in, sessions stop working at once) or enable a user."""
    user.disabled_at = utcnow() if disabled else None
