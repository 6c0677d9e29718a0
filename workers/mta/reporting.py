"""What the MTA reports, and to whom: a protocol the composition root wires to the domains.

The MTA knows nothing of ledgers, bounces or campaigns. It tells a `Reporter` what became
of each recipient (`outcome`) and that inbound mail was stored (`inbound_stored`); the
process shell (`workers/mta_process.py`) plugs in the bounce and campaign services.
"""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    """Receives the MTA's delivery outcomes and inbound notices."""

    async def outcome(self, mail_from: str, recipient: str, outcome: str, reply: str) -> None:
        """One recipient of one spooled message: delivered, deferred, failed or deleted."""

    def inbound_stored(self) -> None:
        """A message for the bounce domain is now in the inbound Maildir."""

    async def stop(self) -> None:
        """Write what is buffered and stop (called after the delivery agent drained)."""
