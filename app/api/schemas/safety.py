"""Content-safety schemas: preflight reports and sender domain checks."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from app.api.schemas.campaigns import CampaignRead
from app.safety.domains import DomainReport
from app.safety.preflight import PreflightReport


class FindingRead(BaseModel):
    """One reason in a preflight: source (warta, spamassassin, dns), rule, points, advice."""

    source: str
    rule: str
    score: float
    message: str


class PreflightRead(BaseModel):
    """A preflight report: the score against the maximum, spamd's state, and the findings."""

    score: float
    max_score: float
    passed: bool
    spamd: str
    size_bytes: int
    findings: list[FindingRead]
    seconds: float

    @classmethod
    def of(cls, report: PreflightReport) -> PreflightRead:
        """From the service's report."""
        return cls.model_validate(report.as_dict())


class StoredPreflightRead(PreflightRead):
    """A stored report, with what ran it and when."""

    context: str
    forced: bool
    checked_at: datetime


class ScheduledCampaign(CampaignRead):
    """The scheduled campaign and the preflight that let it through."""

    preflight: PreflightRead


class DomainCheckRead(BaseModel):
    """One sender-domain check and, unless it passed, the records to publish."""

    name: str
    status: Literal["pass", "warn", "fail"]
    detail: str
    publish: list[str]


class DomainReportRead(BaseModel):
    """Every check of a sending domain and what they were run against."""

    domain: str
    return_path_domain: str
    helo: str
    sending_ips: list[str]
    ok: bool
    checks: list[DomainCheckRead]

    @classmethod
    def of(cls, report: DomainReport) -> DomainReportRead:
        """From the service's report."""
        return cls.model_validate(report.as_dict())
