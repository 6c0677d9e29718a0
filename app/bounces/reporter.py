"""The MTA's `Reporter` on the domain side: outcomes into the ledger, inbound reports acted on."""

from __future__ import annotations

from pathlib import Path

from app.bounces.classify import classifier
from app.bounces.outcomes import Context, LedgerOutcomes
from app.bounces.processor import ReportProcessor
from app.bounces.service import Policy
from app.core.database import create_engine, create_sessionmaker
from app.core.settings import Settings


class LedgerReporter:
    """Writes delivery outcomes in batches and processes the inbound Maildir."""

    def __init__(self, settings: Settings, inbound_dir: Path) -> None:
        self._engine = create_engine(settings)
        sessions = create_sessionmaker(self._engine)
        secret = settings.effective_secret_key()
        policy = Policy.from_settings(settings)
        rules = classifier(settings.bounce_rules)
        self.outcomes = LedgerOutcomes(sessions, secret, Context(policy, rules))
        self.reports = ReportProcessor(
            inbound_dir,
            sessions,
            secret,
            policy,
            rules,
            poll_interval=settings.bounce_poll_interval,
        )
        self.reports.start()

    async def outcome(self, mail_from: str, recipient: str, outcome: str, reply: str) -> None:
        """Queue one outcome for the next batch write."""
        await self.outcomes(mail_from, recipient, outcome, reply)

    def inbound_stored(self) -> None:
        """Look at the inbound Maildir now rather than at the next poll."""
        self.reports.wake()

    async def stop(self) -> None:
        """Stop processing reports, flush the outcomes, close the database."""
        await self.reports.stop()
        await self.outcomes.close()
        await self._engine.dispose()
