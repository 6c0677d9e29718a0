"""The database part of a backup: PostgreSQL through its own tools, SQLite through its API.

PostgreSQL is dumped with `pg_dump -Fc` (one consistent snapshot, taken by the server while
writers go on) and restored with `pg_restore`. The dump is uncompressed (`-Z0`): the backup
file compresses it with zstd, faster and smaller than pg_dump's zlib. The programs are
found as the test fixtures find them (PATH, then the newest /usr/lib/postgresql/*/bin),
preferring the server's major version; one older than the server is refused, since
pg_dump cannot dump a newer server.

SQLite is copied with its online backup API (one read transaction: writers keep writing
to the WAL meanwhile) and restored by putting the file in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from app.backup.errors import BackupError, NotEmpty
from app.core.database import create_engine
from app.core.settings import Settings

PG_DUMP_MEMBER = "database/postgresql.dump"
"""Followed by `.<part>`: the dump is streamed in parts, each a member of known size."""
PART_BYTES = 32 << 20
SQLITE_MEMBER = "database/sqlite.db"
PG_BIN_ROOT = Path("/usr/lib/postgresql")
T = TypeVar("T")


def backend(url: str) -> str:
    """`postgresql` or `sqlite` (anything else is refused)."""
    name = make_url(url).get_backend_name()
    if name not in ("postgresql", "sqlite"):
        raise BackupError(f"cannot back up a {name} database")
    return name


def _reachable(run: Callable[[], T]) -> T:
    """`run()`, with a database that cannot be reached or used as a one-line BackupError."""
    try:
        return run()
    except sa.exc.SQLAlchemyError as exc:
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise BackupError(f"database: {lines[0] if lines else type(exc).__name__}") from None


async def _scalar(url: str, query: str) -> Any:
    engine = create_engine(Settings(database_url=url, _env_file=None))
    try:
        async with engine.connect() as connection:
            return await connection.scalar(sa.text(query))
    finally:
        await engine.dispose()


def schema_revision(url: str) -> str | None:
    """The Alembic revision the database is at, None if it has none."""
    try:
        value = asyncio.run(_scalar(url, "SELECT version_num FROM alembic_version"))
    except sa.exc.DBAPIError:  # no alembic_version table: never migrated
        return None
    return str(value) if value is not None else None


def server_major(url: str) -> int:
    """The PostgreSQL server's major version."""
    return int(_reachable(lambda: asyncio.run(_scalar(url, "SHOW server_version_num")))) // 10000


def pg_program(name: str, major: int) -> tuple[str, int]:
    """(path, major version) of PostgreSQL program `name` best matching server `major`."""
    own = PG_BIN_ROOT / str(major) / "bin" / name
    if os.access(own, os.X_OK):  # Debian's layout: the server's own version, nothing to ask
        return str(own), major
    found: list[tuple[str, int]] = []
    for candidate in [
        shutil.which(name),
        *(str(d / name) for d in PG_BIN_ROOT.glob("*/bin") if os.access(d / name, os.X_OK)),
    ]:
        if candidate and (version := _program_major(candidate)) is not None:
            found.append((candidate, version))
    usable = [item for item in found if item[1] >= major]
    if not usable:
        have = ", ".join(f"{path} ({version})" for path, version in found) or "none"
        raise BackupError(
            f"no {name} of PostgreSQL {major} or newer found (have: {have}); install "
            f"postgresql-client-{major}"
        )
    # The server's own version first, else the oldest newer one.
    return min(usable, key=lambda item: (item[1] != major, item[1]))


def _program_major(path: str) -> int | None:
    try:
        out = subprocess.run(  # noqa: S603 - a PostgreSQL program found above
            [path, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else None


def _libpq(url: URL) -> tuple[list[str], dict[str, str]]:
    """Connection arguments and environment for a PostgreSQL program (password via env)."""
    args = ["--no-password"]
    if url.host:
        args += ["--host", url.host]
    if url.port:
        args += ["--port", str(url.port)]
    if url.username:
        args += ["--username", url.username]
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return args, env


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(  # noqa: S603 - PostgreSQL's own programs, our arguments
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BackupError(f"{what} failed: {detail[-1] if detail else result.returncode}")


@dataclass
class Dump:
    """A database dump under way: SQLite's finished copy, or pg_dump writing to a pipe."""

    facts: dict[str, Any]
    sqlite_copy: Path | None = None
    pg_dump: subprocess.Popen[bytes] | None = None
    errors: Path | None = None

    def parts(self) -> Iterator[tuple[str, bytes]]:
        """(member name, bytes) of PostgreSQL's dump in parts of PART_BYTES, as pg_dump writes.

        A thread reads ahead (two parts at most), so pg_dump and the server keep dumping
        while the previous part is compressed: the file is never staged on disk.
        """
        assert self.pg_dump is not None and self.pg_dump.stdout is not None
        ahead: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=2)
        stream = self.pg_dump.stdout

        def read() -> None:
            try:
                while part := stream.read(PART_BYTES):
                    ahead.put(part)
                ahead.put(None)
            except BaseException as exc:  # handed to the consumer, who raises it
                ahead.put(exc)

        threading.Thread(target=read, name="pg-dump-reader", daemon=True).start()
        index = 0
        while (item := ahead.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield f"{PG_DUMP_MEMBER}.{index:06d}", item
            index += 1
        if self.pg_dump.wait() != 0:
            assert self.errors is not None
            lines = self.errors.read_text(errors="replace").strip().splitlines()
            raise BackupError(f"pg_dump failed: {lines[-1] if lines else self.pg_dump.returncode}")

    def stop(self) -> None:
        """End pg_dump if it still runs (the backup failed elsewhere)."""
        if self.pg_dump is not None and self.pg_dump.poll() is None:
            self.pg_dump.kill()
            self.pg_dump.wait()


def start_dump(url: str, staging: Path) -> Dump:
    """Dump SQLite into `staging`, or start pg_dump writing its custom format to a pipe.

    Either way the database's snapshot is taken before this returns: SQLite's copy is
    done, and pg_dump's transaction has begun once it has written its first bytes.
    """
    if backend(url) == "sqlite":
        path = _sqlite_path(url)
        into = staging / "sqlite.db"
        source = sqlite3.connect(path)
        target = sqlite3.connect(into)
        try:
            source.backup(target)  # all pages in one step: one consistent read transaction
        finally:
            target.close()
            source.close()
        return Dump({"backend": "sqlite", "sqlite_version": sqlite3.sqlite_version}, into)
    parsed = make_url(url)
    major = server_major(url)
    program, version = pg_program("pg_dump", major)
    args, env = _libpq(parsed)
    errors = staging / "pg_dump.err"
    with errors.open("wb") as err:
        process = subprocess.Popen(  # noqa: S603 - PostgreSQL's own program, our arguments
            [program, *args, "--format=custom", "--compress=0", str(parsed.database)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    facts: dict[str, Any] = {"backend": "postgresql", "server_major": major, "pg_dump": program}
    return Dump(facts | {"pg_dump_major": version}, pg_dump=process, errors=errors)


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up")
    return Path(database)


def tables_with_rows(url: str) -> list[str]:
    """Tables of the database that hold at least one row (besides Alembic's own)."""
    return _reachable(lambda: asyncio.run(_tables_with_rows(url)))


async def _tables_with_rows(url: str) -> list[str]:
    if backend(url) == "sqlite" and not _sqlite_path(url).exists():
        return []
    engine = create_engine(Settings(database_url=url, _env_file=None))
    try:
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            full = []
            for name in names:
                if name == "alembic_version":
                    continue
                if await connection.scalar(sa.select(sa.exists().select_from(sa.table(name)))):
                    full.append(name)
            return full
    finally:
        await engine.dispose()


def ensure_empty(url: str, *, force: bool) -> None:
    """Refuse a database holding data unless `force`; then clear it for the restore."""
    full = tables_with_rows(url)
    if full and not force:
        raise NotEmpty(
            f"the database holds data ({len(full)} tables with rows, e.g. {full[0]}); "
            "restore into an empty one, or pass --force to replace it"
        )
    if backend(url) == "sqlite":
        path = _sqlite_path(url)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    _reachable(lambda: asyncio.run(_clear_postgresql(url)))


async def _clear_postgresql(url: str) -> None:
    # A migrated but empty database still has tables pg_restore would collide with.
    engine = create_engine(Settings(database_url=url, _env_file=None))
    try:
        async with engine.begin() as connection:
            await connection.execute(sa.text("DROP SCHEMA IF EXISTS public CASCADE"))
            await connection.execute(sa.text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


def load(url: str, member: str, path: Path) -> None:
    """Restore the dump at `path` (backup member `member`) into the database at `url`."""
    check_kind(url, member)
    if backend(url) == "sqlite":
        target = _sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{target.name}.restoring")
        shutil.copyfile(path, temporary)
        with temporary.open("rb+") as copied:
            os.fsync(copied.fileno())
        os.replace(temporary, target)
        return
    with path.open("rb") as dump:
        load_stream(url, lambda into: shutil.copyfileobj(dump, into, PART_BYTES))


def check_kind(url: str, member: str) -> None:
    """Refuse a dump of one database kind for a database of the other."""
    kind = backend(url)
    if (kind == "sqlite") != (member == SQLITE_MEMBER):
        made = "SQLite" if member == SQLITE_MEMBER else "PostgreSQL"
        raise BackupError(f"the backup holds a {made} database, WARTA_DATABASE_URL is {kind}")


def load_stream(url: str, feed: Callable[[IO[bytes]], None]) -> None:
    """Restore a PostgreSQL dump that `feed` writes into pg_restore's standard input."""
    parsed = make_url(url)
    program, _ = pg_program("pg_restore", server_major(url))
    args, env = _libpq(parsed)
    command = [program, *args, "--no-owner", "--no-privileges", "--exit-on-error"]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(  # noqa: S603 - PostgreSQL's own program, our arguments
            [*command, f"--dbname={parsed.database}"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        assert process.stdin is not None
        failure: BaseException | None = None
        try:
            feed(process.stdin)
        except BrokenPipeError:
            pass  # pg_restore gave up: its own error says why
        except BaseException as exc:  # the feeder's reason beats pg_restore's broken input
            failure = exc
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()  # also when feeding failed: pg_restore must not wait on
        returncode = process.wait()
        if failure is not None:
            raise failure
        if returncode != 0:
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
            raise BackupError(f"pg_restore failed: {lines[-1] if lines else returncode}")
