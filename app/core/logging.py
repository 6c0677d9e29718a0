"""Logging for every process command: one handler on stderr, `text` or `json`, quiet by default.

`configure_logging` is the one place the level (WARTA_LOG_LEVEL) and the format
(WARTA_LOG_FORMAT) are applied. Libraries log through the root logger: uvicorn (its access
log too, one line per request), arq, alembic, aiosmtpd. What they say on every job or every
start without news is moved to DEBUG, so an idle `warta dev` prints nothing after its banner:

- arq's per-job lines (`→ cron:reconcile()`, `← cron:reconcile ● 0`), its start-up
  inventory and its health line; its retry, abort and failure lines stay.
- uvicorn's lifespan chatter (`Waiting for application startup.` and the like).
- alembic's two lines about the dialect on every start; `Running upgrade …` stays.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final, Literal, TextIO

LogFormat = Literal["text", "json"]
LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

DEMOTED: Final[dict[str, frozenset[str]]] = {
    "arq.worker": frozenset(
        {
            "%6.2fs → %s(%s)%s",
            "%6.2fs ← %s ● %s",
            "Starting worker for %d functions: %s",
            "recording health: %s",
        }
    ),
    "uvicorn.error": frozenset(
        {
            "Waiting for application startup.",
            "Application startup complete.",
            "Waiting for application shutdown.",
            "Application shutdown complete.",
        }
    ),
    "alembic.runtime.migration": frozenset({"Context impl %s.", "Will assume %s DDL."}),
}
"""Per logger, the message templates (`record.msg`) logged at INFO that are only DEBUG news."""
DEMOTED_PREFIXES: Final = {"arq.worker": ("redis_version=",)}
"""arq logs its Redis inventory as a preformatted string."""

FLOORS: Final = {
    "mail.log": logging.WARNING,  # aiosmtpd: a line per SMTP connection and command
    "aiosqlite": logging.INFO,  # a line per statement at DEBUG
    "httpcore": logging.INFO,
    "hpack": logging.INFO,
    "multipart": logging.INFO,
    "python_multipart": logging.INFO,
}
"""The least severe level some chatty libraries may log at, whatever WARTA_LOG_LEVEL says."""

ACCESS_FIELDS: Final = ("client", "method", "path", "http_version", "status")
"""The arguments of uvicorn's access record, in order."""

RECORD_FIELDS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message", "taskName"}
)
"""LogRecord attributes that are not `extra=` fields (uvicorn's color_message is a copy)."""


class DemoteRoutine(logging.Filter):
    """Move a logger's routine INFO records to DEBUG (the handler's level then drops them)."""

    def __init__(self, templates: frozenset[str], prefixes: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.templates = templates
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keep the record; lower its level if it is routine."""
        routine = isinstance(record.msg, str) and (
            record.msg in self.templates or record.msg.startswith(self.prefixes)
        )
        if routine and record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


class AccessFields(logging.Filter):
    """Give uvicorn's access records their parts as fields, for the JSON format."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add client, method, path, http_version and status from the record's arguments."""
        args = record.args
        if isinstance(args, tuple) and len(args) == len(ACCESS_FIELDS):
            record.__dict__.update(zip(ACCESS_FIELDS, args, strict=True))
        return True


class TextFormatter(logging.Formatter):
    """`2026-05-01 12:00:01 INFO workers.tasks: campaign 1 started: 300 recipients`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, Any] = {
            "time": _utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            (key, value) for key, value in vars(record).items() if key not in RECORD_FIELDS
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _utc_timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class StderrHandler(logging.StreamHandler[TextIO]):
    """Write to whatever `sys.stderr` is when a record comes, not what it was at set-up.

    rich's progress bars swap `sys.stderr` for a proxy that prints above the bar, so log
    lines never cut through a bar (`warta demo`, `warta import`).
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:
        """The current standard error."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """Ignored: the stream is always the current standard error."""


def configure_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Send every logger's records to stderr in `log_format`, from `level` up (idempotent)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    handler = StderrHandler()
    handler.setLevel(numeric)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name, templates in DEMOTED.items():
        _install(name, DemoteRoutine(templates, DEMOTED_PREFIXES.get(name, ())))
    _install("uvicorn.access", AccessFields())
    for name, floor in FLOORS.items():
        logging.getLogger(name).setLevel(max(numeric, floor))


def _install(name: str, log_filter: logging.Filter) -> None:
    logger = logging.getLogger(name)
    for old in [f for f in logger.filters if type(f) is type(log_filter)]:
        logger.removeFilter(old)
    logger.addFilter(log_filter)
