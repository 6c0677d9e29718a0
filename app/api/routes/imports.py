"""/subscribers/import, /imports/{id} and /subscribers/export"""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from app.api.deps import require
from app.api.schemas.imports import MAX_LIST_IDS, ImportOptions, ImportRead, upload_schema
from app.audience import export
from app.audience import imports as service
from app.audience.csv_reader import read_header
from app.audience.subscribers import SubscriberQuery
from app.core.errors import Invalid
from app.core.http import SessionDep, SettingsDep
from app.models import SubscriberStatus, SubscriptionStatus, utcnow

router = APIRouter(tags=["imports"])
READ = [Depends(require("subscribers:read"))]
WRITE = [Depends(require("subscribers:write"))]
COPY_CHUNK = 1 << 20
MAX_ID = 2**31 - 1
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


@router.post(
    "/subscribers/import",
    status_code=202,
    dependencies=WRITE,
    openapi_extra=upload_schema(),
    responses={413: {"description": "The upload exceeds WARTA_MAX_UPLOAD_BYTES."}},
)
async def upload_import(
    request: Request, response: Response, session: SessionDep, settings: SettingsDep
) -> ImportRead:
    """Upload a CSV (multipart `file`); it is imported in the background: poll Location."""
    # The form is parsed here, not by FastAPI, so an over-long chunked body stays a 413.
    async with request.form(max_files=1, max_fields=MAX_LIST_IDS + 10) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Invalid("the form needs a field `file` holding the CSV file")
        filename = _filename(upload.filename)
        if not filename.lower().endswith(".csv"):
            raise Invalid("the file must be a CSV file whose name ends in .csv")
        options = _options(form)
        path = await _save(upload, settings.var_dir / "imports")
    try:
        await asyncio.to_thread(read_header, path)
        job = await service.create_job(
            session,
            path=path,
            filename=filename,
            mode=options.mode,
            list_ids=options.list_ids,
            subscription_status=options.subscription_status,
            overwrite=options.overwrite,
        )
        await session.commit()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    request.app.state.imports.start(job.id)
    response.headers["Location"] = request.url_for("get_import", job_id=job.id).path
    return ImportRead.model_validate(job)


@router.get("/imports/{job_id}", dependencies=READ)
async def get_import(
    job_id: Annotated[int, Path(ge=1, le=MAX_ID)], session: SessionDep
) -> ImportRead:
    """An import's status, progress and row errors."""
    return ImportRead.model_validate(await service.get(session, job_id))


@router.get(
    "/subscribers/export",
    dependencies=READ,
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV, streamed."}},
)
async def export_subscribers(
    request: Request,
    list_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status: SubscriberStatus | None = None,
    subscription_status: SubscriptionStatus | None = None,
    email: Annotated[str | None, Query(max_length=320, description="substring")] = None,
) -> StreamingResponse:
    """Matching subscribers as CSV: email, name, status, created_at, updated_at, attributes."""
    if email is not None and "\x00" in email:
        raise Invalid("email must not contain NUL characters")
    query = SubscriberQuery(
        list_id=list_id,
        status=status,
        subscription_status=subscription_status,
        email_contains=email,
    )
    rows = export.export_rows(request.app.state.sessionmaker, query)
    first = await anext(rows)  # before answering, so a failing query is a proper error
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        _prepend(first, rows),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="subscribers-{stamp}.csv"'},
    )


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for part in rest:
        yield part


def _options(form: FormData) -> ImportOptions:
    """The form's options, validated as a body would be (422 naming the field)."""
    raw: dict[str, Any] = {}
    for key in ("mode", "subscription_status", "overwrite"):
        value = form.get(key)
        if value is not None:
            raw[key] = value if isinstance(value, str) else "(a file)"
    list_ids: list[str] = []
    for item in form.getlist("list_ids"):
        if not isinstance(item, str):
            raise Invalid("list_ids must be list ids, not a file")
        list_ids.extend(part.strip() for part in item.split(",") if part.strip())
    raw["list_ids"] = list_ids
    try:
        return ImportOptions.model_validate(raw)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


def _filename(raw: str | None) -> str:
    """The uploaded file's base name, safe to store and show."""
    name = FilePath((raw or "").replace("\\", "/")).name
    name = name.encode("utf-8", "replace").decode("utf-8")
    return _UNPRINTABLE.sub("", name)[:300]


async def _save(upload: UploadFile, directory: FilePath) -> FilePath:
    """Copy the upload to `directory` in 1 MB chunks; never whole in memory."""
    path = directory / f"{uuid.uuid4()}.csv"

    def copy() -> None:
        directory.mkdir(parents=True, exist_ok=True)
        upload.file.seek(0)
        with path.open("wb") as out:
            shutil.copyfileobj(upload.file, out, COPY_CHUNK)

    try:
        await asyncio.to_thread(copy)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
