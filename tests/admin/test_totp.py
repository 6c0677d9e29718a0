"""The optional second factor: enrolment proves the app's codes; then each code works once."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyotp
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin import totp
from app.core.database import create_engine
from app.core.migrate import upgrade_async
from app.core.settings import Settings, get_settings
from app.models import AdminRole, AdminUser, AuditEntry
from tests.helpers.admin import PASSWORD, email_of, sign_in, sign_in_response
from tests.helpers.servers import PostgresServer

SECRET = re.compile(r'name="secret" value="([A-Z2-7]+)"')


async def test_enrol_then_sign_in_needs_a_fresh_code(
    console: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    token = await sign_in(console, AdminRole.owner)
    page = (await console.get("/admin/account")).text
    found = SECRET.search(page)
    assert found, page
    secret = found.group(1)
    wrong = await console.post(
        "/admin/account/totp", data={"csrf": token, "secret": secret, "code": "000000"}
    )
    assert wrong.status_code == 400
    now = pyotp.TOTP(secret).now()
    enrolled = await console.post(
        "/admin/account/totp", data={"csrf": token, "secret": secret, "code": now}
    )
    assert enrolled.status_code == 200
    assert "The second factor is on." in enrolled.text
    user = await session.scalar(sa.select(AdminUser).where(AdminUser.role == AdminRole.owner))
    assert user is not None and user.totp_secret is not None
    # Stored sealed under a key derived from WARTA_SECRET_KEY, bound to the user.
    assert secret not in user.totp_secret and user.totp_secret.startswith(totp.SEALED)
    assert totp.unseal(user.totp_secret, settings.effective_secret_key(), user.id) == secret
    assert totp.unseal(user.totp_secret, settings.effective_secret_key(), user.id + 1) is None
    assert totp.unseal(user.totp_secret, "another secret key", user.id) is None

    console.cookies.clear()
    without_code = await sign_in_response(console, email_of(AdminRole.owner))
    assert without_code.status_code == 401
    # The code used for enrolment cannot be replayed for sign-in.
    replayed = await sign_in_response(console, email_of(AdminRole.owner), PASSWORD, now)
    assert replayed.status_code == 401
    # The next step's code (accepted for clock drift) signs in, once.
    following = pyotp.TOTP(secret).at(time.time() + totp.STEP)
    signed_in = await sign_in_response(console, email_of(AdminRole.owner), PASSWORD, following)
    assert signed_in.status_code == 303, signed_in.text
    console.cookies.clear()
    again = await sign_in_response(console, email_of(AdminRole.owner), PASSWORD, following)
    assert again.status_code == 401
    actions = list(await session.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.id)))
    assert "user.totp_on" in actions


def test_codes_of_the_neighbouring_steps_are_accepted_and_older_ones_not() -> None:
    secret = totp.new_secret()
    generator = pyotp.TOTP(secret)
    now = 1_800_000_000.0
    step = int(now // totp.STEP)
    assert totp.matching_step(secret, generator.at(now), 0, now) == step
    assert totp.matching_step(secret, generator.at(now - 30), 0, now) == step - 1
    assert totp.matching_step(secret, generator.at(now + 30), 0, now) == step + 1
    assert totp.matching_step(secret, generator.at(now - 90), 0, now) is None
    assert totp.matching_step(secret, generator.at(now), step, now) is None  # used already
    assert totp.matching_step(secret, "12345", 0, now) is None


@pytest.mark.parametrize("secret_key_set", [True, False], ids=["key-set", "key-unset"])
async def test_0012_seals_the_secrets_stored_before_it_only_under_a_configured_key(
    postgres: PostgresServer | None,
    tmp_path: Path,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    secret_key_set: bool,
) -> None:
    url = (
        postgres.create_database(f"totp_{uuid.uuid4().hex}")
        if postgres is not None
        else f"sqlite+aiosqlite:///{tmp_path / 'totp.db'}"
    )
    await upgrade_async(url, "0011")
    secret = totp.new_secret()
    engine = create_engine(settings.model_copy(update={"database_url": url}))
    try:
        async with engine.begin() as connection:
            await connection.execute(
                sa.text(
                    "INSERT INTO admin_users (email, role, password_hash, totp_secret, "
                    "totp_last_step, created_at, updated_at) VALUES ('old@example.com', "
                    "'owner', 'x', :secret, 0, :now, :now)"
                ),
                {"secret": secret, "now": datetime.now(UTC).replace(tzinfo=None)},
            )
        # The migration seals with the app's key, as `warta migrate` reads it; without a
        # configured key it would be one generated for the migrating process: it leaves the
        # secrets plain, and the sign-in seals each (the next test).
        if secret_key_set:
            monkeypatch.setenv("WARTA_SECRET_KEY", settings.effective_secret_key())
        else:
            monkeypatch.delenv("WARTA_SECRET_KEY", raising=False)
            monkeypatch.setenv("WARTA_VAR_DIR", str(tmp_path / "elsewhere"))
        get_settings.cache_clear()
        try:
            await upgrade_async(url, "head")
        finally:
            get_settings.cache_clear()
        async with engine.connect() as connection:
            user_id, stored = (
                await connection.execute(sa.text("SELECT id, totp_secret FROM admin_users"))
            ).one()
    finally:
        await engine.dispose()
    if not secret_key_set:
        assert stored == secret
        return
    assert stored.startswith(totp.SEALED) and secret not in stored
    assert totp.unseal(stored, settings.effective_secret_key(), user_id) == secret


async def test_a_plain_secret_is_sealed_at_its_users_next_sign_in(
    console: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    secret = totp.new_secret()
    user = await session.scalar(sa.select(AdminUser).where(AdminUser.role == AdminRole.owner))
    assert user is not None
    user.totp_secret = secret  # as 0012 leaves it without WARTA_SECRET_KEY
    await session.commit()
    code = pyotp.TOTP(secret).now()
    signed_in = await sign_in_response(console, email_of(AdminRole.owner), PASSWORD, code)
    assert signed_in.status_code == 303, signed_in.text
    await session.refresh(user)
    assert user.totp_secret is not None and user.totp_secret.startswith(totp.SEALED)
    assert totp.unseal(user.totp_secret, settings.effective_secret_key(), user.id) == secret


def test_a_secret_that_cannot_be_opened_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    sealed = totp.seal(totp.new_secret(), "the key it was sealed with", 7)
    with caplog.at_level("WARNING", logger="app.admin.totp"):
        assert totp.unseal(sealed, "a rotated key", 7) is None
    assert "user 7 cannot be opened" in caplog.text
