"""`warta create-user` as a real command: the user it makes can sign in."""

from __future__ import annotations

import subprocess

import httpx

from app.core.settings import Settings
from tests.helpers.admin import sign_in_response
from tests.helpers.processes import BIN, worker_env


def _create_user(settings: Settings, *args: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "warta", "create-user", *args, "--password-stdin"],
        input=password + "\n",
        env=worker_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_create_user_then_sign_in(settings: Settings, console: httpx.AsyncClient) -> None:
    made = _create_user(
        settings, "New.Person@Example.com", "--role", "marketer", password="a long enough secret"
    )
    assert made.returncode == 0, made.stderr
    assert "created marketer new.person@example.com" in made.stdout
    response = await sign_in_response(console, "new.person@example.com", "a long enough secret")
    assert response.status_code == 303


async def test_create_user_refuses_a_short_password_and_a_duplicate(
    settings: Settings, console: httpx.AsyncClient
) -> None:
    short = _create_user(settings, "x@example.com", "--role", "viewer", password="short")
    assert short.returncode == 1
    assert "at least 12 characters" in short.stderr
    duplicate = _create_user(
        settings, "viewer@example.com", "--role", "viewer", password="long enough password"
    )
    assert duplicate.returncode == 1
    assert "exists already" in duplicate.stderr
