"""Logging: one line per record in text or JSON; routine job and start-up chatter is DEBUG."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.logging import DEMOTED, FLOORS, configure_logging
from app.core.settings import Settings
from campaigns import lifecycle
from tests.helpers.api import eventually
from tests.helpers.seeding import seed_campaign
from workers.worker import run_worker

TOUCHED = ("", *DEMOTED, *FLOORS, "uvicorn.access")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the next test."""
    saved = {
        name: (logger.level, list(logger.handlers), list(logger.filters))
        for name in TOUCHED
        for logger in [logging.getLogger(name or None)]
    }
    yield
    for name, (level, handlers, filters) in saved.items():
        logger = logging.getLogger(name or None)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.filters[:] = filters


def test_text_is_one_readable_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "text")
    logging.getLogger("warta.test").info("campaign %s started", 7)
    logging.getLogger("warta.test").debug("not at INFO")

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" INFO warta.test: campaign 7 started")


def test_json_is_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", "json")
    log = logging.getLogger("warta.test")
    log.debug("batch %s sent", 3, extra={"campaign_id": 7, "recipients": ["a", "b"]})
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("it broke")

    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["level"] == "DEBUG"
    assert first["logger"] == "warta.test"
    assert first["message"] == "batch 3 sent"
    assert (first["campaign_id"], first["recipients"]) == (7, ["a", "b"])
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert second["level"] == "ERROR"
    assert "ValueError: bad\nthing" in second["exception"]


def test_uvicorn_access_lines_carry_their_parts_in_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json")
    # uvicorn's own template and arguments (uvicorn/protocols/http/*_impl.py)
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/healthz", "1.1", 200
    )

    entry = json.loads(capsys.readouterr().err)
    assert entry["message"] == '127.0.0.1:5000 - "GET /healthz HTTP/1.1" 200'
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/healthz", 200)


def test_configuring_twice_keeps_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "text")
    configure_logging("WARNING", "json")
    logging.getLogger("warta.test").info("dropped")
    logging.getLogger("warta.test").warning("kept")

    assert [json.loads(line)["message"] for line in capsys.readouterr().err.splitlines()] == [
        "kept"
    ]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD")


async def _run_worker_until(settings: Settings, done: asyncio.Event, what: str) -> None:
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, settings.redis_url, stop))
    try:

        async def happened() -> bool:
            assert not worker.done(), "the worker stopped"
            return done.is_set()

        await eventually(happened, 30, what)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)


class Watch(logging.Handler):
    """Sets `seen` once `count` records from `logger` matched `text` (any level)."""

    def __init__(self, logger: str, text: str, count: int) -> None:
        super().__init__(logging.DEBUG)
        self.logger, self.text, self.count = logger, text, count
        self.seen = asyncio.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == self.logger and self.text in record.getMessage():
            self.records.append(record)
            if len(self.records) >= self.count:
                self.seen.set()


async def test_an_idle_worker_prints_only_that_it_is_ready(
    engine_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "text")
    # Two finished runs of the per-second cron: arq logged them, at DEBUG.
    watch = Watch("arq.worker", "← cron:resume_messages", 2)
    logging.getLogger().addHandler(watch)
    try:
        await _run_worker_until(engine_settings, watch.seen, "two runs of resume_messages")
    finally:
        logging.getLogger().removeHandler(watch)

    assert {record.levelname for record in watch.records} == {"DEBUG"}
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "worker ready" in lines[0], lines


async def test_a_worker_at_debug_shows_every_job(
    engine_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("DEBUG", "text")
    watch = Watch("arq.worker", "← cron:resume_messages", 1)
    logging.getLogger().addHandler(watch)
    try:
        await _run_worker_until(engine_settings, watch.seen, "a run of resume_messages")
    finally:
        logging.getLogger().removeHandler(watch)

    assert " DEBUG arq.worker: " in capsys.readouterr().err


async def test_a_cron_that_did_work_says_so(
    engine_settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "text")
    # A running campaign whose batch job was never enqueued: reconcile's work.
    campaign_id, _ = await seed_campaign(sessionmaker, 3)
    async with sessionmaker() as session:
        await lifecycle.transition(session, campaign_id, "schedule")
        assert await lifecycle.start(session, campaign_id) is not None
        await session.commit()
    watch = Watch("workers.worker", "reconcile:", 1)
    logging.getLogger().addHandler(watch)
    try:
        await _run_worker_until(engine_settings, watch.seen, "reconcile's line")
    finally:
        logging.getLogger().removeHandler(watch)

    err = capsys.readouterr().err
    assert " INFO workers.worker: reconcile: 1 batch jobs enqueued again" in err, err
    assert "arq" not in err
