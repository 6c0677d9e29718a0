"""`warta mta`: the MTA wired to the bounce and campaign services (the composition root's part)."""

from __future__ import annotations

from app.bounces.reporter import LedgerReporter
from app.core.settings import Settings
from workers.mta.service import MtaService


async def start_mta(settings: Settings) -> MtaService:
    """An MTA instance whose outcomes and inbound reports reach the ledger and bounce handling."""
    inbound = settings.ensure_var_dir() / "inbound"
    return await MtaService.start(settings, LedgerReporter(settings, inbound))
