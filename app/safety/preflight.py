"""The outbound preflight: spamd's score and Warta's own rules on one built message."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from app.core.errors import Conflict
from app.core.settings import Settings
from app.safety import rules
from app.safety.rules import Finding, RuleOptions
from app.safety.spamd import SpamdClient, SpamdError, spamd_client

logger = logging.getLogger(__name__)
SPAMD_NOT_CONFIGURED = "not configured"
SPAMD_SCORED = "scored"
SPAMD_MAX_BYTES = 512 * 1024
"""spamc's own limit: SpamAssassin is not asked about larger messages (they rarely are spam,
and scoring them takes seconds)."""


@dataclass(frozen=True)
class PreflightReport:
    """A message's score against WARTA_PREFLIGHT_MAX_SCORE and the reasons for it."""

    score: float
    max_score: float
    passed: bool
    spamd: str
    """`scored`, `not configured` (WARTA_SPAMD empty), `unavailable: <why>` or `skipped: <why>`."""
    size_bytes: int
    findings: tuple[Finding, ...] = field(default=())
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (stored, and returned by the API)."""
        return asdict(self)


async def run(
    settings: Settings,
    raw: bytes,
    options: RuleOptions,
    *,
    pending: Awaitable[Sequence[Finding]] | None = None,
    spamd: SpamdClient | None = None,
) -> PreflightReport:
    """Score `raw` with spamd (when configured) and Warta's rules, plus the findings
    `pending` yields (the domain checks' DNS look-ups): the three are asked at once."""
    started = time.perf_counter()
    client = spamd if spamd is not None else spamd_client(settings)
    status = SPAMD_NOT_CONFIGURED
    if client is not None and len(raw) > SPAMD_MAX_BYTES:
        status = f"skipped: the message is over {SPAMD_MAX_BYTES // 1024} KB"
        client = None
    if client is None:
        # A few milliseconds of rules: a thread hop would cost more than it overlaps.
        own = rules.check(raw, options)
        later = await pending if pending is not None else ()
        scored: Sequence[Finding] = ()
    else:
        # spamd works for hundreds of milliseconds in its own process: the rules (in a
        # thread) and the DNS look-ups run meanwhile, so the wall time is spamd's alone.
        own, (status, scored), later = await asyncio.gather(
            asyncio.to_thread(rules.check, raw, options),
            _spamd(client, raw),
            pending if pending is not None else _none(),
        )
    findings = [*own, *later, *scored]
    score = rules.total(findings)
    return PreflightReport(
        score=score,
        max_score=settings.preflight_max_score,
        passed=score <= settings.preflight_max_score,
        spamd=status,
        size_bytes=len(raw),
        findings=tuple(sorted(findings, key=lambda f: -f.score)),
        seconds=round(time.perf_counter() - started, 4),
    )


async def _none() -> Sequence[Finding]:
    return ()


async def _spamd(client: SpamdClient, raw: bytes) -> tuple[str, list[Finding]]:
    """(the report's `spamd` status, spamd's rules that scored as findings)."""
    try:
        verdict = await client.score(raw)
    except SpamdError as exc:
        # A preflight is advice: spamd being down must not stop every campaign.
        logger.warning("preflight without SpamAssassin: %s", exc)
        return f"unavailable: {exc.detail}", []
    return SPAMD_SCORED, [
        Finding("spamassassin", rule.name, rule.score, rule.description)
        for rule in verdict.rules
        if rule.score != 0
    ]


class PreflightRefused(Conflict):
    """The preflight score is above WARTA_PREFLIGHT_MAX_SCORE and the request did not force."""

    def __init__(self, report: PreflightReport) -> None:
        super().__init__(
            f"preflight score {report.score:g} is above WARTA_PREFLIGHT_MAX_SCORE "
            f"{report.max_score:g} (spamd: {report.spamd}); fix the findings listed in "
            "`errors`, or schedule with ?force=true",
            errors=[
                {
                    "loc": ["preflight", finding.source, finding.rule],
                    "msg": finding.message,
                    "type": "preflight",
                    "score": finding.score,
                }
                for finding in report.findings
            ],
        )
        self.report = report
