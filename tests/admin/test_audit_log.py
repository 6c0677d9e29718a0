"""The audit log page: filters, paging, CSV export, and who may see it."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin import audit
from app.core.database import unit_of_work
from app.models import AdminRole
from tests.helpers.admin import sign_in


async def _entries(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with unit_of_work(sessionmaker) as session:
        await audit.record(
            session,
            "ops@example.com",
            "suppression.lift",
            "suppression:4",
            {"email": "a@example.com"},
        )
        await audit.record(
            session, "boss@example.com", "campaign.pause", "campaign:9", {"name": "=HYPERLINK(1)"}
        )
        await audit.record(session, "ops@example.com", "list.rename", "=SUM(A1:A9)")
        for i in range(audit.PAGE_SIZE + 5):
            await audit.record(session, "bulk@example.com", "subscriber.erase", f"subscriber:{i}")


async def test_the_log_filters_pages_and_exports(
    console: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _entries(sessionmaker)
    await sign_in(console, AdminRole.admin)
    page = await console.get("/admin/audit", params={"action": "campaign."})
    assert page.status_code == 200
    assert "campaign:9" in page.text and "suppression:4" not in page.text

    by_actor = await console.get("/admin/audit", params={"actor": "ops@example.com"})
    assert "suppression.lift" in by_actor.text and "campaign:9" not in by_actor.text

    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    future = await console.get("/admin/audit", params={"since": tomorrow})
    assert "Nothing recorded for this filter" in future.text
    bad = await console.get("/admin/audit", params={"since": "yesterday"})
    assert bad.status_code == 400

    everything = await console.get("/admin/audit")
    assert "Older entries" in everything.text  # more than one page

    export = await console.get("/admin/audit.csv")
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert len(rows) == audit.PAGE_SIZE + 5 + 3 + 1  # + this admin's own sign-in
    pause = next(r for r in rows if r["action"] == "campaign.pause")
    assert pause["actor"] == "boss@example.com"
    assert pause["details"] == '{"name": "=HYPERLINK(1)"}'
    # A cell a spreadsheet would run as a formula is defused with a leading quote.
    assert next(r for r in rows if r["action"] == "list.rename")["target"] == "'=SUM(A1:A9)"
    filtered = await console.get("/admin/audit.csv", params={"action": "suppression."})
    assert [r["target"] for r in csv.DictReader(io.StringIO(filtered.text))] == ["suppression:4"]


async def test_sign_in_is_audited(console: httpx.AsyncClient, session: AsyncSession) -> None:
    await sign_in(console, AdminRole.owner)
    found = await audit.page(session, audit.AuditFilter(action="user.sign_in"))
    assert [(e.actor_email, e.action) for e in found] == [("owner@example.com", "user.sign_in")]


async def test_marketers_and_viewers_may_not_read_the_log(console: httpx.AsyncClient) -> None:
    for role in (AdminRole.marketer, AdminRole.viewer):
        console.cookies.clear()
        await sign_in(console, role)
        assert (await console.get("/admin/audit")).status_code == 403
        assert (await console.get("/admin/audit.csv")).status_code == 403
