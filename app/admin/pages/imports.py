"""CSV import with a live progress bar and the per-row errors; the subscriber export.

The same job as the API's POST /subscribers/import: `app.audience.imports.create_job`, run by
the process's `ImportRunner`; the page polls the job (`audience.js`) and works without it
by reloading. The export streams `app.audience.export` as GET /subscribers/export does.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from starlette.datastructures import UploadFile

from app.admin import audit
from app.admin.deps import CurrentAdmin, Refused, needs, page_router
from app.admin.pages.forms import MAX_ID, DbId, refuse
from app.admin.rendering import HEADERS, render
from app.audience import export
from app.audience import imports as service
from app.audience import lists as lists_service
from app.audience.csv_reader import read_header
from app.audience.subscribers import SubscriberQuery
from app.core.errors import DomainError
from app.core.http import SessionDep, SettingsDep
from app.models import ImportJob, ImportStatus, SubscriberStatus, SubscriptionStatus, utcnow

router = page_router()
READ = [needs("subscribers:read")]
WRITE = [needs("subscribers:write")]
COPY_CHUNK = 1 << 20
ERRORS_SHOWN = 200
LISTS_SHOWN = 500
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def progress_of(job: ImportJob) -> dict[str, object]:
    """What the progress bar shows, as the page renders it and the poll returns it."""
    percent = 100.0 if job.status is ImportStatus.finished else 0.0
    if job.total_bytes and job.status is not ImportStatus.finished:
        percent = min(100.0, 100.0 * job.bytes_read / job.total_bytes)
    return {
        "status": job.status.value,
        "percent": round(percent, 1),
        "rows_processed": job.rows_processed,
        "rows_imported": job.rows_imported,
        "rows_failed": job.rows_failed,
        "error": job.error,
        "done": job.status in (ImportStatus.finished, ImportStatus.failed),
    }


@router.get("/imports/new", dependencies=WRITE)
async def import_form(admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """The upload form."""
    return render(
        "import_new.html",
        admin,
        title="Import subscribers",
        current="/admin/subscribers",
        lists=(await lists_service.page(session, 0, LISTS_SHOWN))[:LISTS_SHOWN],
    )


# The API's body limit lets WARTA_MAX_UPLOAD_BYTES through on this path (app.api.app).
@router.post("/imports", dependencies=WRITE)
async def upload(
    request: Request, admin: CurrentAdmin, session: SessionDep, settings: SettingsDep
) -> RedirectResponse:
    """Store the file, queue the job (audited), start it here, and show its progress."""
    async with request.form(max_files=1, max_fields=service.MAX_LIST_IDS + 10) as form:
        upload_file = form.get("file")
        if not isinstance(upload_file, UploadFile) or not upload_file.filename:
            raise Refused(422, "No file", "Choose a CSV file to import.")
        filename = _filename(upload_file.filename)
        if not filename.lower().endswith(".csv"):
            raise Refused(422, "Not a CSV file", "The file's name must end in .csv.")
        list_ids = [int(v) for v in form.getlist("list_ids") if isinstance(v, str) and v.isdigit()]
        mode = str(form.get("mode") or "subscribe")
        status = str(form.get("subscription_status") or "confirmed")
        overwrite = form.get("overwrite") == "on"
        path = await _save(upload_file, settings.var_dir / "imports")
    try:
        await asyncio.to_thread(read_header, path)
        job = await service.create_job(
            session,
            path=path,
            filename=filename,
            mode=mode,
            list_ids=list_ids,
            subscription_status=status,
            overwrite=overwrite,
        )
        await audit.record(
            session,
            admin.user,
            "import.start",
            f"import:{job.id}",
            {"file": filename, "mode": mode, "lists": list_ids},
        )
        await session.commit()
    except DomainError as exc:
        path.unlink(missing_ok=True)
        refuse(exc)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    request.app.state.imports.start(job.id)
    return RedirectResponse(f"/admin/imports/{job.id}", status_code=303)


async def _job(session: SessionDep, job_id: int) -> ImportJob:
    try:
        return await service.get(session, job_id)
    except DomainError as exc:
        refuse(exc)


@router.get("/imports/{job_id}", dependencies=READ)
async def import_page(job_id: DbId, admin: CurrentAdmin, session: SessionDep) -> HTMLResponse:
    """The job's progress bar and its rejected rows."""
    job = await _job(session, job_id)
    return render(
        "import.html",
        admin,
        title=f"Import of {job.filename}",
        current="/admin/subscribers",
        job=job,
        progress=progress_of(job),
        errors=job.errors[:ERRORS_SHOWN],
    )


@router.get("/imports/{job_id}/progress.json", dependencies=READ)
async def import_progress(job_id: DbId, session: SessionDep) -> JSONResponse:
    """The progress, polled by audience.js."""
    return JSONResponse(progress_of(await _job(session, job_id)), headers=HEADERS)


@router.get("/exports/subscribers.csv", dependencies=READ)
async def export_csv(
    request: Request,
    email: Annotated[str, Query(max_length=320)] = "",
    list_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status: SubscriberStatus | None = None,
    subscription_status: SubscriptionStatus | None = None,
) -> StreamingResponse:
    """The matching subscribers as CSV (the filters of the subscribers page)."""
    query = SubscriberQuery(
        list_id=list_id,
        status=status,
        subscription_status=subscription_status,
        email_contains=email.replace("\x00", "") or None,
    )
    rows = export.export_rows(request.app.state.sessionmaker, query)
    first = await anext(rows)
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        _prepend(first, rows),
        media_type="text/csv; charset=utf-8",
        headers={
            **HEADERS,
            "Content-Disposition": f'attachment; filename="subscribers-{stamp}.csv"',
        },
    )


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for part in rest:
        yield part


def _filename(raw: str) -> str:
    """The uploaded file's base name, safe to store and show."""
    name = Path(raw.replace("\\", "/")).name
    return _UNPRINTABLE.sub("", name.encode("utf-8", "replace").decode("utf-8"))[:300]


async def _save(upload_file: UploadFile, directory: Path) -> Path:
    """Copy the upload to `directory` in 1 MB chunks; never whole in memory."""
    path = directory / f"{uuid.uuid4()}.csv"

    def copy() -> None:
        directory.mkdir(parents=True, exist_ok=True)
        upload_file.file.seek(0)
        with path.open("wb") as out:
            shutil.copyfileobj(upload_file.file, out, COPY_CHUNK)

    try:
        await asyncio.to_thread(copy)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
