"""`warta mta`: the MTA wired to the bounce, campaign and inbound services (the composition
root's part)."""

from __future__ import annotations

from app.bounces.reporter import LedgerReporter
from app.core.settings import Settings
from app.inbound.reporter import ReplyReporter
from workers.mta.service import MtaService


async def start_mta(settings: Settings) -> MtaService:
    """An MTA instance whose outcomes, inbound reports and replies reach the domains."""
    var = settings.ensure_var_dir()
    reporter = LedgerReporter(settings, var / "inbound")
    replies = ReplyReporter(settings, var / "replies", var / "inbound", reporter.inbound_stored)
    return await MtaService.start(settings, reporter, replies)
