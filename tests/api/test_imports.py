"""CSV import (upload, background job, row errors, upsert rules, CLI entry) and CSV export."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api.app import create_app
from app.audience import export, imports
from app.audience.subscribers import SubscriberQuery
from app.core import api_keys
from app.core.errors import Invalid
from app.core.settings import Settings
from app.models import ImportJob, ImportStatus, MailingList, utcnow
from tests.helpers.api import ADMIN_TOKEN

POLL_EVERY = 0.02
DEADLINE = 30.0


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client against an app built from these settings, lifespan running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as client:
            yield client


async def upload(
    client: httpx.AsyncClient,
    text: str | bytes,
    filename: str = "people.csv",
    data: dict[str, Any] | None = None,
) -> httpx.Response:
    body = text.encode() if isinstance(text, str) else text
    return await client.post(
        "/api/v1/subscribers/import",
        files={"file": (filename, body, "text/csv")},
        data=data or {},
    )


async def wait_for(client: httpx.AsyncClient, location: str) -> dict[str, Any]:
    """Poll the job until it ends, within a bounded deadline."""
    deadline = time.monotonic() + DEADLINE
    while True:
        response = await client.get(location)
        assert response.status_code == 200, response.text
        job = dict(response.json())
        if job["status"] in ("finished", "failed"):
            return job
        assert time.monotonic() < deadline, f"import still {job['status']} after {DEADLINE} s"
        await asyncio.sleep(POLL_EVERY)


async def run(
    client: httpx.AsyncClient, text: str | bytes, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await upload(client, text, data=data)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/api/v1/imports/{response.json()['id']}"
    job = await wait_for(client, response.headers["location"])
    assert job["status"] == "finished", job
    return job


async def make_list(client: httpx.AsyncClient, name: str) -> int:
    response = await client.post("/api/v1/lists", json={"name": name})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def subscribers(client: httpx.AsyncClient, **params: Any) -> dict[str, dict[str, Any]]:
    response = await client.get("/api/v1/subscribers", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return {item["email"]: item for item in response.json()["items"]}


def memberships(subscriber: dict[str, Any]) -> dict[int, str]:
    return {m["list_id"]: m["status"] for m in subscriber["lists"]}


async def test_good_rows_are_imported_and_bad_rows_reported_by_line(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    text = (
        "\ufeffEmail,NAME,city,plan\r\n"
        "ada@example.com,Ada,London,pro\r\n"
        "not-an-email,Bob,Paris,free\r\n"
        "carol@example.com,Carol,Berlin\r\n"
        "dave@example.com,Da\x00ve,Rome,pro\r\n"
        '"eve@example.com","Eve\r\nBcc: victim@example.net",Oslo,pro\r\n'
        "\r\n"
        "  Frank@Example.com , Frank ,Lima,\r\n"
    )
    job = await run(client, text)
    assert (job["rows_processed"], job["rows_imported"], job["rows_failed"]) == (6, 2, 4)
    assert job["bytes_read"] == job["total_bytes"] == len(text.encode())
    assert job["filename"] == "people.csv"
    errors = {error["line"]: error for error in job["errors"]}
    assert sorted(errors) == [3, 4, 5, 6]
    assert errors[3]["email"] == "not-an-email"
    assert errors[3]["reason"].startswith("invalid address")
    assert errors[4]["reason"] == "expected 4 columns, found 3"
    assert "NUL" in errors[5]["reason"]
    assert "single line" in errors[6]["reason"]
    stored = await subscribers(client)
    assert sorted(stored) == ["ada@example.com", "frank@example.com"]
    assert stored["ada@example.com"]["attributes"] == {"city": "London", "plan": "pro"}
    assert stored["frank@example.com"]["name"] == "Frank"
    assert stored["frank@example.com"]["attributes"] == {"city": "Lima"}
    assert not list((settings.var_dir / "imports").iterdir()), "the upload is removed"


async def test_upsert_updates_existing_and_merges_attributes(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/api/v1/subscribers",
        json={"email": "ada@example.com", "name": "Old", "attributes": {"city": "Oslo", "tier": 3}},
    )
    assert created.status_code == 201
    await run(client, "email,name,city,plan\nADA@Example.COM,Ada Lovelace,London,pro\n")
    ada = (await subscribers(client))["ada@example.com"]
    assert ada["id"] == created.json()["id"]
    assert ada["name"] == "Ada Lovelace"
    assert ada["attributes"] == {"city": "London", "tier": 3, "plan": "pro"}

    await run(client, "email,name,city\nada@example.com,,\n")  # empty cells erase nothing
    ada = (await subscribers(client))["ada@example.com"]
    assert (ada["name"], ada["attributes"]["city"]) == ("Ada Lovelace", "London")

    await run(client, "email,name,city\nada@example.com,Other,Paris\n", {"overwrite": "false"})
    ada = (await subscribers(client))["ada@example.com"]
    assert (ada["name"], ada["attributes"]["city"]) == ("Ada Lovelace", "London")


async def test_the_same_address_twice_is_one_subscriber(settings: Settings) -> None:
    text = (
        "email,name,city,plan\n"
        "ada@example.com,First,Oslo,\n"
        "ADA@example.com,Second,,pro\n"
        "bob@example.com,Bob,,\n"
        "Ada@Example.com,,Rome,\n"
    )
    for batch_size in (100, 2):  # within one chunk, and across chunks
        tuned = settings.model_copy(
            update={"import_batch_size": batch_size, "var_dir": settings.var_dir / str(batch_size)}
        )
        async with app_client(tuned) as client:
            job = await run(client, text)
            assert (job["rows_imported"], job["rows_failed"]) == (4, 0)
            ada = (await subscribers(client))["ada@example.com"]
            assert ada["name"] == "Second"
            assert ada["attributes"] == {"city": "Rome", "plan": "pro"}
            await client.delete(f"/api/v1/subscribers/{ada['id']}")


async def test_lists_are_added_with_the_chosen_status(client: httpx.AsyncClient) -> None:
    news, offers, other = [await make_list(client, name) for name in ("news", "offers", "x")]
    await run(client, "email\na@example.com\nb@example.com\n", {"list_ids": f"{news}, {offers}"})
    stored = await subscribers(client)
    assert memberships(stored["a@example.com"]) == {news: "confirmed", offers: "confirmed"}
    await run(
        client,
        "email\nb@example.com\nc@example.com\n",
        {"list_ids": [str(news), str(other)], "subscription_status": "unconfirmed"},
    )
    stored = await subscribers(client)
    assert memberships(stored["b@example.com"]) == {
        news: "confirmed",  # existing memberships keep their status
        offers: "confirmed",
        other: "unconfirmed",
    }
    assert memberships(stored["c@example.com"]) == {news: "unconfirmed", other: "unconfirmed"}


async def test_unsubscribed_and_blocklisted_are_not_undone(client: httpx.AsyncClient) -> None:
    news = await make_list(client, "news")
    created = await client.post(
        "/api/v1/subscribers", json={"email": "gone@example.com", "lists": [news]}
    )
    subscriber_id = created.json()["id"]
    left = await client.put(
        f"/api/v1/subscribers/{subscriber_id}/lists/{news}", json={"status": "unsubscribed"}
    )
    assert left.status_code == 200
    await client.post(
        "/api/v1/subscribers", json={"email": "blocked@example.com", "status": "blocklisted"}
    )
    await run(client, "email\ngone@example.com\nblocked@example.com\n", {"list_ids": str(news)})
    stored = await subscribers(client)
    assert memberships(stored["gone@example.com"]) == {news: "unsubscribed"}
    assert stored["blocked@example.com"]["status"] == "blocklisted"


async def test_blocklist_mode(client: httpx.AsyncClient) -> None:
    news = await make_list(client, "news")
    await client.post("/api/v1/subscribers", json={"email": "old@example.com", "lists": [news]})
    suppressed = await client.post("/api/v1/suppressions", json={"address": "old@example.com"})
    job = await run(
        client, "email,name\nold@example.com,\nnew@example.com,New\n", {"mode": "blocklist"}
    )
    assert job["mode"] == "blocklist"
    stored = await subscribers(client)
    assert {email: s["status"] for email, s in stored.items()} == {
        "old@example.com": "blocklisted",
        "new@example.com": "blocklisted",
    }
    assert memberships(stored["old@example.com"]) == {news: "confirmed"}
    assert memberships(stored["new@example.com"]) == {}
    assert suppressed.status_code == 201
    listed = await client.get("/api/v1/suppressions")  # left exactly as they were
    assert [s["address"] for s in listed.json()["items"]] == ["old@example.com"]
    refused = await upload(
        client, "email\na@example.com\n", data={"mode": "blocklist", "list_ids": str(news)}
    )
    assert refused.status_code == 422


@pytest.mark.parametrize(
    ("text", "filename", "data", "detail"),
    [
        ("name,city\nAda,Oslo\n", "people.csv", {}, "no email column"),
        ("", "people.csv", {}, "empty"),
        ("\n\nemail\n", "people.csv", {}, "empty"),
        ("email,first name\n", "people.csv", {}, "column 2"),
        ("email,city,City\n", "people.csv", {}, "twice"),
        ("email,age:integer\n", "people.csv", {}, "unknown type"),
        ("email\na@example.com\n", "people.xlsx", {}, ".csv"),
        ("email\na@example.com\n", "people.csv", {"list_ids": "999"}, "unknown list ids"),
        ("email\na@example.com\n", "people.csv", {"list_ids": "x"}, "list_ids"),
        ("email\na@example.com\n", "people.csv", {"mode": "delete"}, "mode"),
        ("email\na@example.com\n", "people.csv", {"subscription_status": "unsubscribed"}, "status"),
    ],
)
async def test_unusable_uploads_are_refused_at_once(
    client: httpx.AsyncClient,
    settings: Settings,
    text: str,
    filename: str,
    data: dict[str, str],
    detail: str,
) -> None:
    response = await upload(client, text, filename=filename, data=data)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.text
    leftovers = settings.var_dir / "imports"
    assert not leftovers.exists() or not list(leftovers.iterdir())


async def test_a_form_without_a_file_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/subscribers/import", data={"file": "email\n"})
    assert response.status_code == 422
    assert "file" in response.json()["detail"]


async def test_oversize_upload_is_413(settings: Settings) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 2048})
    text = "email\n" + "".join(f"user{i}@example.com\n" for i in range(200))
    async with app_client(small) as client:
        response = await upload(client, text)
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert (await upload(client, "email\na@example.com\n")).status_code == 202


async def test_import_needs_the_write_scope(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    _, token = await api_keys.create_key(session, "reader", ["subscribers:read"])
    await session.commit()
    headers = {"Authorization": f"Bearer {token}"}
    response = await client.post(
        "/api/v1/subscribers/import",
        files={"file": ("a.csv", b"email\na@example.com\n", "text/csv")},
        headers=headers,
    )
    assert response.status_code == 403
    assert (await client.get("/api/v1/subscribers/export", headers=headers)).status_code == 200


async def test_typed_columns_and_semicolons(client: httpx.AsyncClient) -> None:
    text = "email;age:number;score:number;vip:boolean;zip\na@example.com;42;-1.5;yes;01234\nb@example.com;forty;;;\n"
    job = await run(client, text)
    assert job["rows_failed"] == 1
    assert job["errors"][0]["line"] == 3
    assert "age: expected a number" in job["errors"][0]["reason"]
    stored = await subscribers(client)
    assert stored["a@example.com"]["attributes"] == {
        "age": 42,
        "score": -1.5,
        "vip": True,
        "zip": "01234",
    }


async def test_errors_are_capped_but_counted(client: httpx.AsyncClient) -> None:
    text = "email\n" + "bad\n" * 1100 + "good@example.com\n"
    job = await run(client, text)
    assert (job["rows_processed"], job["rows_imported"], job["rows_failed"]) == (1101, 1, 1100)
    assert len(job["errors"]) == 1000
    assert job["errors"][-1]["line"] == 1001


async def test_not_utf8_rows_are_rejected_alone(client: httpx.AsyncClient) -> None:
    body = "email,name\na@example.com,Zoë\n".encode() + b"b@example.com,Zo\xeb\n"
    job = await run(client, body)
    assert job["rows_failed"] == 1
    assert "UTF-8" in job["errors"][0]["reason"]
    assert (await subscribers(client))["a@example.com"]["name"] == "Zoë"


async def test_export_streams_csv_and_filters(client: httpx.AsyncClient) -> None:
    news = await make_list(client, "news")
    await run(
        client,
        'email,name,city\na@example.com,"Smith, Ann",Oslo\nb@example.com,Bob,\n',
        {"list_ids": str(news)},
    )
    await run(client, "email\nc@example.com\n", {"mode": "blocklist"})
    response = await client.get("/api/v1/subscribers/export")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["email"] for row in rows] == ["a@example.com", "b@example.com", "c@example.com"]
    assert list(rows[0]) == ["email", "name", "status", "created_at", "updated_at", "attributes"]
    assert rows[0]["name"] == "Smith, Ann"
    assert json.loads(rows[0]["attributes"]) == {"city": "Oslo"}
    assert rows[2]["status"] == "blocklisted"

    async def emails(**params: Any) -> list[str]:
        found = await client.get("/api/v1/subscribers/export", params=params)
        assert found.status_code == 200, found.text
        return [row["email"] for row in csv.DictReader(io.StringIO(found.text))]

    assert await emails(list_id=news) == ["a@example.com", "b@example.com"]
    assert await emails(status="blocklisted") == ["c@example.com"]
    assert await emails(email="B@EXAMPLE") == ["b@example.com"]
    assert await emails(subscription_status="unconfirmed") == []
    for bad in ({"status": "x"}, {"list_id": "0"}):
        response = await client.get("/api/v1/subscribers/export", params=bad)
        assert response.status_code == 422, bad
    # NUL anywhere in the URL is refused before routing.
    nul = await client.get("/api/v1/subscribers/export", params={"email": "a\x00b"})
    assert nul.status_code == 400


async def test_export_runs_in_keyset_batches(
    sessionmaker: async_sessionmaker[AsyncSession], client: httpx.AsyncClient
) -> None:
    await run(client, "email\n" + "".join(f"u{i:03}@example.com\n" for i in range(12)))
    query = SubscriberQuery()
    parts = [part async for part in export.export_rows(sessionmaker, query, batch_size=5)]
    assert len(parts) == 3  # the header with 5 rows, 5 rows, 2 rows
    lines = "".join(parts).splitlines()
    assert len(lines) == 13 and lines[-1].startswith("u011@example.com,")


async def test_get_unknown_import_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/imports/12345")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_import_file_runs_in_process_with_progress(
    settings: Settings, session: AsyncSession, tmp_path: Path
) -> None:
    news = MailingList(name="news")
    session.add(news)
    await session.commit()
    path = tmp_path / "people.csv"
    path.write_text(
        "email,name\n" + "".join(f"u{i}@example.com,U{i}\n" for i in range(25)) + "bad\n"
    )
    tuned = settings.model_copy(update={"import_batch_size": 10})
    seen: list[tuple[int, int]] = []
    job = await imports.import_file(
        tuned,
        path,
        [news.id],
        "subscribe",
        "confirmed",
        lambda job: seen.append((job.rows_processed, job.bytes_read)),
    )
    assert job.status is ImportStatus.finished
    assert (job.rows_imported, job.rows_failed) == (25, 1)
    assert [processed for processed, _ in seen] == [10, 20, 26]
    assert seen[-1][1] == path.stat().st_size
    assert path.exists(), "a local file is the user's: it is not removed"
    with pytest.raises(Invalid):
        await imports.import_file(
            tuned, tmp_path / "missing.csv", [], "subscribe", "confirmed", None
        )


async def test_cancelled_import_is_failed_and_keeps_committed_chunks(
    sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    path.write_text("email\n" + "".join(f"u{i}@example.com\n" for i in range(50)))
    async with sessionmaker() as session:
        job = await imports.create_job(
            session,
            path=path,
            filename=path.name,
            mode="subscribe",
            list_ids=[],
            subscription_status="confirmed",
            overwrite=True,
        )
        await session.commit()
    first_chunk = asyncio.Event()

    def progress(_: ImportJob) -> None:
        first_chunk.set()

    task = asyncio.create_task(
        imports.run_import(sessionmaker, job.id, batch_size=10, progress=progress)
    )
    await asyncio.wait_for(first_chunk.wait(), DEADLINE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with sessionmaker() as session:
        stored = await session.get(ImportJob, job.id)
        assert stored is not None
        assert stored.status is ImportStatus.failed
        assert stored.error == imports.INTERRUPTED
        assert stored.rows_imported >= 10
        count = await session.scalar(sa.text("SELECT count(*) FROM subscribers"))
        assert count == stored.rows_imported


async def test_recover_interrupted_fails_only_stale_jobs(session: AsyncSession) -> None:
    long_ago = utcnow() - timedelta(minutes=10)
    stale = ImportJob(status=ImportStatus.running, started_at=long_ago, created_at=long_ago)
    stale_queued = ImportJob(status=ImportStatus.queued, created_at=long_ago)
    live = ImportJob(status=ImportStatus.running, started_at=utcnow())
    done = ImportJob(status=ImportStatus.finished, started_at=long_ago, created_at=long_ago)
    session.add_all([stale, stale_queued, live, done])
    await session.commit()
    failed = await imports.recover_interrupted(session)
    await session.commit()
    assert sorted(failed) == sorted([stale.id, stale_queued.id])
    session.expire_all()
    statuses = {
        job.id: (job.status, job.error)
        for job in (await session.scalars(sa.select(ImportJob))).all()
    }
    assert statuses[stale.id] == (ImportStatus.failed, imports.INTERRUPTED)
    assert statuses[live.id] == (ImportStatus.running, "")
    assert statuses[done.id] == (ImportStatus.finished, "")


async def test_oversize_chunked_upload_is_413(settings: Settings) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 2048})
    boundary = "warta-boundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        "Content-Type: text/csv\r\n\r\nemail\r\n"
    ).encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        for i in range(200):  # no Content-Length: the limit is found while reading
            yield f"user{i}@example.com\r\n".encode()
        yield f"\r\n--{boundary}--\r\n".encode()

    async with app_client(small) as client:
        response = await client.post(
            "/api/v1/subscribers/import",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413, response.text
        leftovers = small.var_dir / "imports"
        assert not leftovers.exists() or not list(leftovers.iterdir())
