"""One retry policy for every ledger: how often a row is submitted, how long it waits between.

A temporary refusal defers the row with exponential back-off (`base`, doubling per attempt,
at most `cap`) until `max_attempts` submissions have been made; a permanent refusal, or a
temporary one on the last attempt, fails it. Campaign rows and transactional messages differ
only in the settings they read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from app.core.settings import Settings
from app.mail.recording import Attempt, LedgerRow, Verdict
from app.mail.result import Outcome, SendResult


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """An attempt limit and exponential back-off, from settings."""

    max_attempts: int
    base: float
    """Seconds before the first retry; doubles per attempt."""
    cap: float | None = None
    """The longest wait between two attempts, in seconds; None: no cap."""

    @classmethod
    def for_campaigns(cls, settings: Settings) -> RetryPolicy:
        """Campaign ledger rows: WARTA_MAX_ATTEMPTS, WARTA_RETRY_BASE, WARTA_RETRY_MAX."""
        return cls(settings.max_attempts, settings.retry_base, settings.retry_max)

    @classmethod
    def for_messages(cls, settings: Settings) -> RetryPolicy:
        """Transactional messages: WARTA_MESSAGE_MAX_ATTEMPTS, WARTA_MESSAGE_RETRY_BASE."""
        return cls(settings.message_max_attempts, settings.message_retry_base)

    def delay(self, attempts: int) -> timedelta:
        """The wait after a deferral of a row already submitted `attempts` times before."""
        seconds = self.base * 2**attempts
        return timedelta(seconds=seconds if self.cap is None else min(seconds, self.cap))

    def judge(self, row: LedgerRow, attempts: int, result: SendResult, now: datetime) -> Attempt:
        """The attempt `result` makes of a row submitted `attempts` times before this one."""
        reply = result.describe()
        if result.outcome is Outcome.DELIVERED:
            return Attempt(row, Verdict.SENT, reply)
        if result.outcome is Outcome.TEMPORARY and attempts + 1 < self.max_attempts:
            return Attempt(row, Verdict.DEFERRED, reply, now + self.delay(attempts))
        return Attempt(row, Verdict.FAILED, reply)
