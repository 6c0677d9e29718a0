"""Submission from outside the trusted networks: STARTTLS, then AUTH with an API key."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import api_keys
from tests.helpers.api import eventually
from tests.helpers.servers import free_port
from tests.helpers.tls import Pki, make_pki
from workers.mta.auth import ApiKeyAuthenticator
from workers.mta.auth_throttle import AuthThrottle
from workers.mta.listener import Networks, SubmissionHandler, serve
from workers.mta.spool import Spool

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: s\r\n\r\nhello\r\n"


@pytest.fixture
async def listener(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession]
) -> AsyncIterator[tuple[int, Pki, Spool, ApiKeyAuthenticator]]:
    pki = make_pki(tmp_path)
    spool = Spool(tmp_path / "spool")
    spool.recover()
    authenticator = ApiKeyAuthenticator(sessionmaker)
    await authenticator.start()
    port = free_port()
    server = await serve(
        SubmissionHandler(spool, Networks.parse("10.0.0.0/8"), max_recipients=10),
        f"127.0.0.1:{port}",
        hostname="mta.example.com",
        max_message_size=100_000,
        idle_timeout=30,
        per_client=10,
        tls_context=pki.server_context(),
        authenticator=authenticator,
    )
    yield port, pki, spool, authenticator
    server.close()
    await server.wait_closed()
    await authenticator.stop()
    await spool.close()


async def _keys(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[str, str]:
    async with sessionmaker() as session:
        _, sender = await api_keys.create_key(session, "app", ["messages:write"])
        _, reader = await api_keys.create_key(session, "reader", ["lists:read"])
        await session.commit()
    return sender, reader


async def test_auth_over_tls_with_an_api_key_relays(
    listener: tuple[int, Pki, Spool, ApiKeyAuthenticator],
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    port, pki, spool, authenticator = listener
    sender, reader = await _keys(sessionmaker)
    await authenticator.refresh()  # what the background refresh does every few seconds

    def session(password: str, tls: bool) -> str:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("app.example.com")
            if tls:
                client.starttls(context=pki.client_context())
                client.ehlo("app.example.com")
            try:
                client.login("app", password)
            except smtplib.SMTPException as exc:
                return type(exc).__name__ + ":" + str(getattr(exc, "smtp_code", ""))
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
            return "sent"

    assert await asyncio.to_thread(session, sender, True) == "sent"
    assert await asyncio.to_thread(session, reader, True) == "SMTPAuthenticationError:535"
    assert await asyncio.to_thread(session, "wk_wrong", True) == "SMTPAuthenticationError:535"
    # Without TLS, AUTH is not even offered: no credentials ever cross in plaintext.
    assert (await asyncio.to_thread(session, sender, False)).startswith("SMTPNotSupportedError")
    assert len(list(spool.messages.iterdir())) == 1


async def test_untrusted_and_unauthenticated_is_refused(
    listener: tuple[int, Pki, Spool, ApiKeyAuthenticator],
) -> None:
    port, pki, _, _ = listener

    def attempt() -> int:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("x.example.com")
            client.starttls(context=pki.client_context())
            client.ehlo("x.example.com")
            return client.mail("a@example.com")[0]

    assert await asyncio.to_thread(attempt) == 530


async def test_fifty_wrong_passwords_lock_the_address_and_the_login_out_then_it_recovers(
    tmp_path: Path, sessionmaker: async_sessionmaker[AsyncSession], redis_url: str
) -> None:
    pki = make_pki(tmp_path)
    spool = Spool(tmp_path / "spool")
    spool.recover()
    authenticator = ApiKeyAuthenticator(sessionmaker)
    sender, _ = await _keys(sessionmaker)
    await authenticator.start()
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    # Counted in Redis: another MTA process with its own throttle object sees the same counts.
    throttle = AuthThrottle(redis, limit=10, window=3)
    port = free_port()
    server = await serve(
        SubmissionHandler(spool, Networks.parse("10.0.0.0/8"), max_recipients=10),
        f"127.0.0.1:{port}",
        hostname="mta.example.com",
        max_message_size=100_000,
        idle_timeout=30,
        per_client=100,
        tls_context=pki.server_context(),
        authenticator=authenticator,
        auth_guard=throttle,
    )

    def login(password: str, login: str = "app", source: str = "127.0.0.1") -> str:
        with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
            client.ehlo("app.example.com")
            client.starttls(context=pki.client_context())
            client.ehlo("app.example.com")
            client.user, client.password = login, password
            try:  # one mechanism, one attempt (login() would try PLAIN, then LOGIN)
                client.auth("PLAIN", client.auth_plain)
            except smtplib.SMTPException as exc:
                return str(getattr(exc, "smtp_code", type(exc).__name__))
            return "in"

    try:
        replies = [await asyncio.to_thread(login, f"wk_wrong_{n}") for n in range(50)]
        assert replies[:10] == ["535"] * 10
        assert set(replies[10:]) == {"421"}  # refused before the password is even checked
        # The right key from the locked address is refused too, and so is the locked login
        # from another address; a different login from another address is not.
        assert await asyncio.to_thread(login, sender) == "421"
        assert await asyncio.to_thread(login, sender, "app", "127.0.0.2") == "421"
        assert await asyncio.to_thread(login, sender, "other", "127.0.0.3") == "in"
        assert await AuthThrottle(redis, limit=10, window=3).blocked("127.0.0.1", None)

        async def recovered() -> bool:
            return await asyncio.to_thread(login, sender) == "in"

        await eventually(recovered, within=10, what="the lockout to end with its window")
    finally:
        server.close()
        await server.wait_closed()
        await authenticator.stop()
        await spool.close()
        await redis.aclose()
