"""CSV imports as jobs: create, run (in the background or in-process), recover.

An import runs as named steps: claim the job, import the file chunk by chunk
(`app.audience.import_runner`: per chunk of `import_batch_size` rows, one transaction holding the
rows and the job's progress), then mark it finished or failed. A crash loses at most the
chunk in flight; the job is then failed as interrupted (at the next start of the API, see
`recover_interrupted`) and re-uploading the file finishes it, because the import is an
idempotent upsert by address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience import lists as lists_service
from app.audience.csv_reader import read_header
from app.audience.import_runner import Progress, Sessionmaker, import_chunks
from app.core.database import create_engine, create_sessionmaker, unit_of_work
from app.core.errors import Invalid, NotFound
from app.core.settings import Settings
from app.models import ImportJob, ImportMode, ImportStatus, SubscriptionStatus, utcnow

__all__ = [
    "ImportJob",
    "ImportRunner",
    "create_job",
    "get",
    "import_file",
    "recover_interrupted",
    "run_import",
]

logger = logging.getLogger(__name__)

MAX_LIST_IDS = 1000
DEFAULT_BATCH_SIZE = 5000
STALE_AFTER = timedelta(minutes=5)
INTERRUPTED = (
    "interrupted: the API process stopped; re-upload to finish "
    "(rows already imported are kept — the import is an idempotent upsert)"
)
STOPPED = (
    "interrupted: the import was stopped; run it again to finish "
    "(rows already imported are kept — the import is an idempotent upsert)"
)
IMPORT_STATUSES = (SubscriptionStatus.confirmed, SubscriptionStatus.unconfirmed)


async def get(session: AsyncSession, job_id: int) -> ImportJob:
    """The import job, or NotFound."""
    found = await session.get(ImportJob, job_id)
    if found is None:
        raise NotFound(f"import {job_id} does not exist")
    return found


async def create_job(
    session: AsyncSession,
    *,
    path: Path,
    filename: str,
    mode: str,
    list_ids: Sequence[int],
    subscription_status: str,
    overwrite: bool,
) -> ImportJob:
    """A queued job for the file at `path`; unknown lists or options are Invalid."""
    try:
        chosen_mode = ImportMode(mode)
        status = SubscriptionStatus(subscription_status)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if status not in IMPORT_STATUSES:
        raise Invalid("subscription_status must be confirmed or unconfirmed")
    unique_ids = list(dict.fromkeys(list_ids))
    if len(unique_ids) > MAX_LIST_IDS:
        raise Invalid(f"at most {MAX_LIST_IDS} lists can be given")
    if chosen_mode is ImportMode.blocklist and unique_ids:
        raise Invalid("list_ids apply to mode=subscribe; a blocklist import adds to no list")
    missing = await lists_service.missing_ids(session, unique_ids)
    if missing:
        raise Invalid(f"unknown list ids: {missing}")
    size = (await asyncio.to_thread(path.stat)).st_size
    job = ImportJob(
        status=ImportStatus.queued,
        mode=chosen_mode,
        list_ids=unique_ids,
        subscription_status=status.value,
        overwrite=overwrite,
        filename=filename[:300],
        path=str(path),
        total_bytes=size,
    )
    session.add(job)
    await session.flush()
    return job


async def run_import(
    sessionmaker: Sessionmaker,
    job_id: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    remove_file: bool = False,
    on_cancel: str = INTERRUPTED,
) -> ImportJob:
    """Run a queued job to its end (finished or failed) and return its final state.

    Never raises for a bad file or a database error: the job records them. Cancelling the
    task fails the job with `on_cancel` before the cancellation propagates.
    """
    job, claimed = await _claim(sessionmaker, job_id)
    if not claimed:
        return job  # another runner has it, or it has ended
    try:
        await import_chunks(sessionmaker, job, batch_size, progress)
        await _finish(sessionmaker, job)
    except asyncio.CancelledError:
        await _fail(sessionmaker, job, on_cancel)
        raise
    except Invalid as exc:
        await _fail(sessionmaker, job, exc.detail)
    except Exception as exc:
        logger.exception("import %s failed", job_id)
        await _fail(sessionmaker, job, f"the import stopped: {_first_line(exc)}")
    finally:
        if remove_file:
            await asyncio.to_thread(Path(job.path).unlink, missing_ok=True)
    return job


async def import_file(
    settings: Settings,
    path: Path,
    list_ids: list[int],
    mode: str,
    subscription_status: str,
    progress: Progress | None = None,
    *,
    overwrite: bool = True,
) -> ImportJob:
    """Import a local file in this process (the CLI): Invalid if it cannot start at all."""
    path = await asyncio.to_thread(path.resolve)
    await asyncio.to_thread(read_header, path)
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    try:
        async with unit_of_work(sessionmaker) as session:
            job = await create_job(
                session,
                path=path,
                filename=path.name,
                mode=mode,
                list_ids=list_ids,
                subscription_status=subscription_status,
                overwrite=overwrite,
            )
        return await run_import(
            sessionmaker,
            job.id,
            batch_size=settings.import_batch_size,
            progress=progress,
            on_cancel=STOPPED,
        )
    finally:
        await engine.dispose()


async def recover_interrupted(
    session: AsyncSession, *, stale_after: timedelta = STALE_AFTER
) -> list[int]:
    """Fail jobs a dead process left queued or running; returns their ids.

    Without a heartbeat column, a job counts as dead when it started (or was queued) more
    than `stale_after` ago. A live runner elsewhere heals its job at its next chunk.
    """
    now = utcnow()
    since = sa.func.coalesce(ImportJob.started_at, ImportJob.created_at)
    failed = await session.scalars(
        sa.update(ImportJob)
        .where(
            ImportJob.status.in_([ImportStatus.queued, ImportStatus.running]),
            since < now - stale_after,
        )
        .values(status=ImportStatus.failed, error=INTERRUPTED, finished_at=now)
        .returning(ImportJob.id)
    )
    return list(failed.all())


class ImportRunner:
    """The imports running in this process as asyncio tasks; cancelled when it stops."""

    def __init__(self, sessionmaker: Sessionmaker, batch_size: int) -> None:
        self.sessionmaker = sessionmaker
        self.batch_size = batch_size
        self._tasks: set[asyncio.Task[ImportJob]] = set()

    def start(self, job_id: int) -> None:
        """Run a committed job in the background; its uploaded file is removed at the end."""
        task = asyncio.create_task(
            run_import(self.sessionmaker, job_id, batch_size=self.batch_size, remove_file=True),
            name=f"import-{job_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, grace: float = 10.0) -> None:
        """Cancel running imports (each records itself as interrupted) and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)


async def _claim(sessionmaker: Sessionmaker, job_id: int) -> tuple[ImportJob, bool]:
    """Mark a queued job running; False if it is not queued (one runner per job)."""
    async with unit_of_work(sessionmaker) as session:
        job = await session.get(ImportJob, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"import {job_id} does not exist")
        if job.status is not ImportStatus.queued:
            return job, False
        job.status = ImportStatus.running
        job.started_at = utcnow()
    return job, True


async def _finish(sessionmaker: Sessionmaker, job: ImportJob) -> None:
    await _set_end(sessionmaker, job, ImportStatus.finished, "")


async def _fail(sessionmaker: Sessionmaker, job: ImportJob, error: str) -> None:
    try:
        await _set_end(sessionmaker, job, ImportStatus.failed, error)
    except Exception:
        logger.exception("could not record the failure of import %s", job.id)


async def _set_end(
    sessionmaker: Sessionmaker, job: ImportJob, status: ImportStatus, error: str
) -> None:
    values = {"status": status, "error": error, "finished_at": utcnow()}
    async with unit_of_work(sessionmaker) as session:
        await session.execute(sa.update(ImportJob).where(ImportJob.id == job.id).values(values))
    for name, value in values.items():
        setattr(job, name, value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]
