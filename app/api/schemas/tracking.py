"""Open and click statistics of a tracked campaign."""

from __future__ import annotations

from pydantic import BaseModel


class Counts(BaseModel):
    """Totals and unique subscribers; `machine_*` are proxy opens and scanner clicks."""

    total: int
    unique: int
    machine_total: int
    machine_unique: int


class LinkStats(BaseModel):
    """One link of the campaign's HTML and its clicks."""

    position: int
    url: str
    clicks: Counts


class CampaignLinkStats(BaseModel):
    """Opens and per-link clicks; people and machines counted apart."""

    campaign_id: int
    tracking: bool
    opens: Counts
    links: list[LinkStats]
