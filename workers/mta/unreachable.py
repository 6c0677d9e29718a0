"""Destinations whose connections fail: held for a while, not tried again for every message.

Postfix's queue manager declares a destination dead when its connections fail, and defers
the mail queued for it without trying until the next attempt is due. Without that, every
message queued for a host that is down made a connection attempt of its own (or waited
out a connect timeout) and wrote its deferral to the spool with an fsync: in the
acceptance benchmark, whose next hop is down, the delivery agent was a third of `warta
mta`'s GIL samples (py-spy), the refused connections alone 12 %.

A destination is held after `FAILURES_TO_HOLD` deliveries in a row got no reply from any
of its hosts (refused, unreachable, dropped, timed out), for `HOLD` seconds. Mail for it
is put back in the schedule until then, with no attempt counted and nothing written (a
restart simply tries it again). When the hold ends, the next delivery is a probe: one
more failure holds the destination again, any reply from a server (even a refusal) ends
it. Only this instance's own deliveries count; nothing here decides who gets mail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from app.mail.result import Outcome, SendResult

logger = logging.getLogger(__name__)

FAILURES_TO_HOLD = 3
"""Deliveries in a row without a reply from the destination before it is held."""
HOLD = 60.0
"""Seconds a destination is held: mail for it waits, then one delivery probes it."""


def _no_reply(results: Iterable[SendResult]) -> bool:
    """Whether no server answered: every result a connection failure (or a timeout)."""
    found = False
    for result in results:
        if result.code is not None or result.outcome is not Outcome.TEMPORARY:
            return False
        found = True
    return found


class UnreachableDestinations:
    """Counts connection failures per destination key and holds the failing ones."""

    def __init__(self, hold: float = HOLD, failures_to_hold: int = FAILURES_TO_HOLD) -> None:
        self.hold = hold
        self.failures_to_hold = failures_to_hold
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def __bool__(self) -> bool:
        """Whether any destination is (or was, until a delivery looks) held."""
        return bool(self._until)

    def held_until(self, key: str, now: float) -> float | None:
        """When the hold on `key` ends, if it is held at `now`."""
        until = self._until.get(key)
        if until is None:
            return None
        if until <= now:
            del self._until[key]  # over: the next delivery probes (one failure holds again)
            return None
        return until

    def record(self, key: str, results: Iterable[SendResult], now: float) -> None:
        """Count one delivery to `key`: a reply from a server clears it, none counts."""
        if not _no_reply(results):
            self._failures.pop(key, None)
            if self._until.pop(key, None) is not None:
                logger.info("destination %s answers again: its mail is no longer held", key)
            return
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        if failures >= self.failures_to_hold and key not in self._until:
            self._until[key] = now + self.hold
            logger.warning(
                "destination %s unreachable (%d deliveries without a reply): its mail waits "
                "%.0f s without being tried",
                key,
                failures,
                self.hold,
            )

    def snapshot(self, now: float) -> dict[str, float]:
        """Held destinations and when each hold ends (for the queue API)."""
        return {key: until for key, until in self._until.items() if until > now}
