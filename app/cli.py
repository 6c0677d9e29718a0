"""The `warta` command line."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from app.core import allocator, api_keys, collector
from app.core import migrate as migrations
from app.core.database import create_engine, create_sessionmaker, unit_of_work
from app.core.devserver import Child, ChildFailed, own_command
from app.core.errors import DomainError
from app.core.logging import configure_logging
from app.core.processes import die_with_parent
from app.core.redis import EmbeddedRedis, resolve_redis_url
from app.core.settings import Settings, SettingsError, get_settings, persisted_token
from app.core.terminal import console

if TYPE_CHECKING:  # imported where the API is served: a worker or an MTA has no use for it
    import uvicorn

T = TypeVar("T")
cli = typer.Typer(
    help="Warta: self-hosted newsletter and bulk mail.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
logger = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CommandFailed(Exception):
    """A command could not do its job; the message is the one-line reason."""


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop (about 40% more SMTP throughput here), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main)
    return uvloop.run(main)


def _settings() -> Settings:
    """The settings, with logging configured from them (WARTA_LOG_LEVEL, WARTA_LOG_FORMAT)."""
    try:
        settings = get_settings()
    except (SettingsError, ValidationError) as exc:
        raise CommandFailed(f"configuration error: {_first_line(exc)}") from None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        return f"{where}: {err['msg']}"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _on_signals(stop: asyncio.Event) -> None:
    """The first SIGINT or SIGTERM sets `stop`; a second one ends the process at once."""
    loop = asyncio.get_running_loop()

    def first() -> None:
        stop.set()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)

    for sig in SIGNALS:
        loop.add_signal_handler(sig, first)


async def _until_stopped(stop: asyncio.Event, services: dict[str, asyncio.Task[None]]) -> None:
    """Wait for `stop`; raise CommandFailed if a service ends first (the others keep running)."""
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({stopping, *services.values()}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    for name, task in services.items():
        if task.done() and not stop.is_set():
            error = task.exception()
            raise CommandFailed(f"the {name} stopped: {_first_line(error) if error else 'done'}")


async def _listening(
    server: uvicorn.Server, services: Iterable[asyncio.Task[None]], stop: asyncio.Event
) -> bool:
    """Wait until uvicorn listens (it has a flag, not an event), a service ends or `stop`
    is set; whether the API listens and is to keep serving."""
    while not (server.started or stop.is_set()):
        done, _ = await asyncio.wait(set(services), timeout=0.05)
        if done:
            break
    return server.started and not stop.is_set()


async def _serve_until_stopped(settings: Settings) -> None:
    from app.api.server import serve, server_for

    stop = asyncio.Event()
    _on_signals(stop)
    server = server_for(settings)
    serving = asyncio.create_task(serve(server))
    try:
        if await _listening(server, [serving], stop):
            collector.settle_after_start()
        await _until_stopped(stop, {"API": serving})
    finally:
        server.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)


def _with_redis(settings: Settings) -> tuple[Settings, EmbeddedRedis | None]:
    """Settings whose redis_url names a running Redis (the embedded one if none is set)."""
    url, embedded = resolve_redis_url(settings)
    return settings.model_copy(update={"redis_url": url}), embedded


async def _ensure_key(settings: Settings, token: str, name: str) -> None:
    engine = create_engine(settings)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as session:
            await api_keys.ensure_key(session, token, name)
    finally:
        await engine.dispose()


def _dev_key(settings: Settings) -> str:
    """The bootstrap key, or one generated once into var/ for development."""
    if settings.bootstrap_api_key:
        return settings.bootstrap_api_key
    return persisted_token(
        settings.ensure_var_dir() / "dev-api-key",
        lambda: api_keys.TOKEN_PREFIX + secrets.token_urlsafe(32),
    )


@cli.command()
def migrate() -> None:
    """Apply database migrations up to the newest revision."""
    settings = _settings()
    console().print(f"migrating {_safe_url(settings.database_url)} …")
    migrations.upgrade(settings.database_url)
    console().print("[green]database is up to date[/green]")


@cli.command()
def api() -> None:
    """Serve the HTTP API (run as many as you like behind a load balancer)."""
    settings, embedded = _with_redis(_settings())
    try:
        _run(_serve_until_stopped(settings))
    finally:
        if embedded is not None:
            embedded.stop()


@cli.command()
def dev() -> None:
    """Development: migrate, make an API key, serve API, worker and MTA (on two cores)."""
    settings = _settings()
    settings.effective_secret_key()
    migrations.upgrade(settings.database_url)
    token = _dev_key(settings)
    asyncio.run(_ensure_key(settings, token, "development"))
    settings, embedded = _with_redis(settings)
    try:
        _run(_dev_services(settings, lambda: _print_dev_banner(settings, token, embedded)))
    finally:
        if embedded is not None:
            embedded.stop()


def _print_dev_banner(settings: Settings, token: str, embedded: EmbeddedRedis | None) -> None:
    base = f"http://{settings.api_host}:{settings.api_port}"
    where = f" → {settings.var_dir / 'maildir'}" if settings.mta_delivery == "capture" else ""
    console().print(f"[bold]Warta[/bold] API      {base}/api/v1")
    console().print(f"      OpenAPI  {base}/docs  ({base}/openapi.json)")
    console().print(f"      health   {base}/healthz")
    console().print(
        f"      MTA      smtp://{settings.mta_submission} ({settings.mta_delivery}{where})"
    )
    console().print(f"      API key  [bold]{token}[/bold]")
    console().print(f'      try      curl -H "Authorization: Bearer {token}" {base}/api/v1/lists')
    redis = " and the embedded Redis" if embedded is not None and embedded.owner else ""
    console().print(f"      ready; Ctrl-C stops the API, the worker, the MTA{redis}")


async def _dev_services(settings: Settings, ready: Callable[[], None]) -> None:
    """The MTA in a child process, API and worker here; `ready` once both listen; a signal
    stops all (the MTA last); the MTA's end ends the rest (app/core/devserver.py)."""
    from workers.worker import run_worker

    stop = asyncio.Event()
    _on_signals(stop)
    try:
        mta = await Child.start("MTA", [*own_command(), "dev-mta"], _dev_child_env(settings))
    except ChildFailed as exc:
        raise CommandFailed(str(exc)) from None
    from app.api.server import serve, server_for

    server = server_for(settings)
    services = {
        "MTA": asyncio.create_task(mta.exited()),
        "worker": asyncio.create_task(run_worker(settings, settings.redis_url, stop)),
        "API": asyncio.create_task(serve(server)),
    }
    try:
        if await _listening(server, services.values(), stop):
            collector.settle_after_start()
            ready()
        await _until_stopped(stop, services)
    finally:
        stop.set()
        server.should_exit = True
        services["MTA"].cancel()
        await asyncio.gather(*services.values(), return_exceptions=True)
        await mta.stop()


def _dev_child_env(settings: Settings) -> dict[str, str]:
    """The environment of `warta dev`'s MTA: ours, plus what `warta dev` decided itself."""
    import os

    return {
        **os.environ,
        "WARTA_REDIS_URL": settings.redis_url,  # the embedded Redis this process owns
        "WARTA_SECRET_KEY": settings.effective_secret_key(),
    }


@cli.command("dev-mta", hidden=True)
def dev_mta() -> None:
    """`warta dev`'s MTA, its child process: says on stdout when it listens."""
    from app.core.devserver import report_ready

    _run(_mta_until_signalled(_settings(), report_ready))


@cli.command()
def worker() -> None:
    """Run a campaign worker (bulk and priority queues); run as many as you like."""
    from workers.worker import run_worker

    settings, embedded = _with_redis(_settings())
    try:
        _run(run_worker(settings, settings.redis_url, started=collector.settle_after_start))
    finally:
        if embedded is not None:
            embedded.stop()


@cli.command()
def mta() -> None:
    """The embedded MTA: submission and inbound listeners, durable spool, delivery."""
    from workers.mta.instances import consolidate

    settings, embedded = _with_redis(_settings())
    settings.effective_secret_key()
    try:
        spools = consolidate(settings.mta_spool_dir, settings.mta_processes)
        if len(spools) == 1:
            _run(_mta_until_signalled(settings))
        elif failure := _supervise_mtas(settings, spools):
            raise CommandFailed(failure)
    finally:
        if embedded is not None:
            embedded.stop()


def _supervise_mtas(settings: Settings, spools: list[Path]) -> str | None:
    """Run one `warta mta` per spool on shared ports; stop all when one dies or on a signal."""
    import os
    import subprocess
    import time

    env = {
        **os.environ,
        "WARTA_REDIS_URL": settings.redis_url,
        "WARTA_SECRET_KEY": settings.effective_secret_key(),
        "WARTA_MTA_PROCESSES": "1",
        "WARTA_MTA_REUSE_PORT": "true",
    }
    children = [
        subprocess.Popen(  # noqa: S603 - our own console script, our own settings
            [sys.argv[0], "mta"],
            env={**env, "WARTA_MTA_SPOOL_DIR": str(spool)},
            preexec_fn=die_with_parent(),
        )
        for spool in spools
    ]
    logger.info("MTA: %d processes, spools %s", len(children), ", ".join(map(str, spools)))
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = None
    while any(child.poll() is None for child in children):
        for child in children:
            code = child.poll()
            if code not in (None, 0) and not stopping:
                failed = f"an MTA process exited with {code}; stopping the others"
                forward(signal.SIGTERM, None)
        time.sleep(0.2)
    return failed


async def _mta_until_signalled(settings: Settings, ready: Callable[[], None] | None = None) -> None:
    from workers.mta.shaping import RulesError
    from workers.mta_process import start_mta

    try:
        service = await start_mta(settings)
    except RulesError as exc:
        raise CommandFailed(f"MTA rules: {exc}") from None
    logger.info(
        "MTA: submission %s, inbound %s, delivery %s, spool %s",
        settings.mta_submission,
        settings.mta_inbound,
        settings.mta_delivery,
        settings.mta_spool_dir,
    )
    collector.settle_after_start()
    if ready is not None:
        ready()
    stop = asyncio.Event()
    _on_signals(stop)
    await stop.wait()
    logger.info("MTA draining: no new mail accepted, deliveries in flight finish")
    await service.stop()


@cli.command("dkim-keygen")
def dkim_keygen(
    domain: Annotated[str, typer.Argument(help="The From domain to sign for.")],
    selector: Annotated[str, typer.Argument(help="The DNS selector, e.g. warta2026.")],
    algorithm: Annotated[str, typer.Option(help="rsa (2048 bits) or ed25519.")] = "rsa",
) -> None:
    """Create a DKIM key under WARTA_DKIM_DIR and print the DNS TXT record to publish."""
    from app.mail.dkim import generate_key

    if algorithm not in ("rsa", "ed25519"):
        raise CommandFailed("--algorithm must be rsa or ed25519")
    settings = _settings()
    try:
        record = generate_key(settings.dkim_dir, domain, selector, algorithm)  # type: ignore[arg-type]
    except FileExistsError:
        raise CommandFailed(f"a key for {selector}._domainkey.{domain} exists already") from None
    except ValueError as exc:
        raise CommandFailed(str(exc)) from None
    typer.echo(record)
    from app.safety.commands import print_sender_records

    print_sender_records(settings, domain)


@cli.command()
def demo(
    recipients: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many to send.")] = 1000,
) -> None:
    """Seed a list of generated subscribers and send them a campaign into the capture Maildir.

    Starts its own MTA unless one already listens on WARTA_MTA_SUBMISSION (`warta dev`).
    """
    from app.demo import run_demo

    settings = _settings()
    if settings.mta_delivery != "capture":
        raise CommandFailed(
            "warta demo mails generated @example.com addresses into the capture Maildir; "
            f"set WARTA_MTA_DELIVERY=capture (it is {settings.mta_delivery})"
        )
    settings.effective_secret_key()
    migrations.upgrade(settings.database_url)
    settings, embedded = _with_redis(settings)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    try:
        with Progress(
            TextColumn("sending"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=console(),
        ) as bar:
            task = bar.add_task("send", total=recipients, detail="")

            def report(done: int, total: int, counts: dict[str, int]) -> None:
                detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                bar.update(task, completed=done, total=total, detail=detail)

            result = _run(run_demo(settings, recipients, report))
    finally:
        if embedded is not None:
            embedded.stop()
    maildir = (settings.var_dir / "maildir").resolve()
    summary = (
        f"{result.delivered} of {result.recipients} messages delivered into the capture "
        f"Maildir {maildir} (campaign {result.campaign_id})"
    )
    if failure := result.failure():
        console().print(summary)
        raise CommandFailed(failure)
    console().print(f"[green]done[/green]: {summary}")
    if waiting := result.accepted - result.delivered:
        console().print(f"      {waiting} more accepted by the MTA, not yet reported delivered")
    console().print(f"      read them with any mail reader, e.g. mutt -f {maildir}")


@cli.command("create-api-key")
def create_api_key(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    scopes: Annotated[
        list[str] | None,
        typer.Option(help="Scopes (repeatable): admin, lists:read, subscribers:write, …"),
    ] = None,
) -> None:
    """Create an API key and print its token (shown only this once)."""
    settings = _settings()

    async def run() -> str:
        engine = create_engine(settings)
        try:
            async with unit_of_work(create_sessionmaker(engine)) as session:
                _, token = await api_keys.create_key(session, name, scopes or ["admin"])
                return token
        finally:
            await engine.dispose()

    typer.echo(asyncio.run(run()))


@cli.command("import")
def import_csv(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    list_ids: Annotated[
        list[int] | None, typer.Option("--list", help="List id (repeatable).")
    ] = None,
    blocklist: Annotated[bool, typer.Option(help="Blocklist the addresses instead.")] = False,
    unconfirmed: Annotated[
        bool, typer.Option(help="Add memberships as unconfirmed (double opt-in).")
    ] = False,
) -> None:
    """Import subscribers from a CSV file (email,name,…attributes), upserting by email."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from app.audience import imports

    settings = _settings()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]} rows, {task.fields[failed]} failed"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console()) as progress:
        task = progress.add_task("importing", total=file.stat().st_size, rows=0, failed=0)

        def report(job: imports.ImportJob) -> None:
            progress.update(
                task, completed=job.bytes_read, rows=job.rows_processed, failed=job.rows_failed
            )

        job = asyncio.run(
            imports.import_file(
                settings,
                file,
                list_ids or [],
                "blocklist" if blocklist else "subscribe",
                "unconfirmed" if unconfirmed else "confirmed",
                report,
            )
        )
    for error in job.errors[:20]:
        console().print(f"  line {error.get('line')}: {error.get('reason')}")
    if job.status != "finished":
        raise CommandFailed(f"import failed: {job.error}")
    console().print(
        f"[green]imported {job.rows_imported} rows[/green], {job.rows_failed} rejected "
        f"(import #{job.id})"
    )


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    """Entry point: run the command; any failure is one line on stderr and exit status 1."""
    configure_logging()  # until a command has read WARTA_LOG_LEVEL and WARTA_LOG_FORMAT
    allocator.limit_arenas()  # before any thread allocates
    try:
        cli()
    except KeyboardInterrupt:
        console().print("interrupted")
        sys.exit(130)
    except CommandFailed as exc:
        console().print(f"[red]error:[/red] {exc}")
        sys.exit(1)
    except (DomainError, SettingsError, OSError) as exc:
        console().print(f"[red]error:[/red] {_first_line(exc)}")
        sys.exit(1)


from app.backup.commands import register as register_backup_commands  # noqa: E402

register_backup_commands(cli)
from app.admin.commands import create_user  # noqa: E402

cli.command("create-user")(create_user)
