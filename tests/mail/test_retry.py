"""One retry policy for campaign rows and transactional messages, read from settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.core.settings import Settings
from app.mail.identity import Kind
from app.mail.recording import LedgerRow, Verdict
from app.mail.result import SendResult
from app.mail.retry import RetryPolicy

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
ROW = LedgerRow(Kind.CAMPAIGN, 7, "a@example.com", 1, 2)
BUSY = SendResult.from_reply(451, "4.3.0 try later")


def _settings(**environment: str) -> Settings:
    return Settings(_env_file=None, **environment)  # type: ignore[call-arg]


def test_campaign_defaults_are_six_attempts_a_minute_doubling_capped_at_an_hour() -> None:
    policy = RetryPolicy.for_campaigns(_settings())
    assert (policy.max_attempts, policy.base, policy.cap) == (6, 60, 3600)
    waits = [policy.delay(attempts) for attempts in range(8)]
    assert waits[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert waits[6:] == [timedelta(hours=1)] * 2


def test_message_defaults_have_no_cap() -> None:
    policy = RetryPolicy.for_messages(_settings())
    assert (policy.max_attempts, policy.base, policy.cap) == (8, 30, None)
    assert policy.delay(10) == timedelta(seconds=30 * 2**10)


def test_the_environment_sets_each_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARTA_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("WARTA_RETRY_BASE", "5")
    monkeypatch.setenv("WARTA_RETRY_MAX", "15")
    monkeypatch.setenv("WARTA_MESSAGE_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("WARTA_MESSAGE_RETRY_BASE", "1.5")
    settings = _settings()
    assert RetryPolicy.for_campaigns(settings) == RetryPolicy(3, 5, 15)
    assert RetryPolicy.for_messages(settings) == RetryPolicy(2, 1.5)


def test_a_deferral_waits_and_the_last_attempt_fails() -> None:
    policy = RetryPolicy(max_attempts=3, base=10, cap=25)
    first = policy.judge(ROW, 0, BUSY, NOW)
    assert (first.row, first.verdict, first.reply) == (ROW, Verdict.DEFERRED, "451 4.3.0 try later")
    assert first.next_attempt_at == NOW + timedelta(seconds=10)
    second = policy.judge(ROW, 1, BUSY, NOW)
    assert second.next_attempt_at == NOW + timedelta(seconds=20)
    last = policy.judge(ROW, 2, BUSY, NOW)
    assert (last.verdict, last.next_attempt_at) == (Verdict.FAILED, None)


def test_acceptance_sends_and_a_permanent_refusal_fails_at_once() -> None:
    policy = RetryPolicy(max_attempts=5, base=10)
    sent = policy.judge(ROW, 3, SendResult.from_reply(250, "2.0.0 queued as X"), NOW)
    assert (sent.verdict, sent.reply, sent.next_attempt_at) == (
        Verdict.SENT,
        "250 2.0.0 queued as X",
        None,
    )
    refused = policy.judge(ROW, 0, SendResult.from_reply(550, "5.1.1 no such user"), NOW)
    assert refused.verdict is Verdict.FAILED
    dropped = policy.judge(ROW, 0, SendResult.connection_failure("connection lost"), NOW)
    assert (dropped.verdict, dropped.reply) == (Verdict.DEFERRED, "connection lost")
