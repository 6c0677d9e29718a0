"""Every admin console page against a large database: p50/p95 per page, flagged over 300 ms.

One PostgreSQL (the test suite's throwaway server) is filled with server-side
`INSERT … SELECT generate_series` statements (no ORM rows): subscribers in five lists,
finished campaigns with their ledger (`sends`), the events of that ledger (sent, delivered,
bounced, opened, clicked) and of transactional messages, the `event_rollups` built from those
events as `record_events` would have counted them, bounces, suppressions, webhook deliveries
and audit entries; the last campaign is still running. Then a real `warta api` process
serves the console, one owner signs in, and every page is fetched `--rounds` times in turn.

The issue's size is the default (1,000,000 subscribers, 200 campaigns, 10,000,000 events);
seeding it takes a while:

    python -m bench.admin_bench [--subscribers N] [--campaigns N] [--events N]
                                [--rounds N] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.campaign import stack
from bench.processes import ROOT, free_port, process, wait_port, warta
from bench.results import Row

SUBSCRIBERS, CAMPAIGNS, EVENTS = 1_000_000, 200, 10_000_000
QUICK = (20_000, 20, 200_000)
ROUNDS, QUICK_ROUNDS = 20, 5
LIMIT_MS = 300.0
"""The issue's bound on a page's p95."""
LISTS = 5
EVENTS_PER_SEND = 2.5
"""sent (1) + delivered (0.97) + bounced (0.03) + opened (0.4) + clicked (0.1)."""
OWNER, PASSWORD = "owner@example.com", "bench password, long enough"


@dataclass(frozen=True)
class Seeded:
    """Ids the page list needs."""

    finished_campaign: int
    running_campaign: int
    subscriber: int
    message: int
    bounce: int
    sends: int
    events: int


async def _sql(session: Any, label: str, statement: str, **params: Any) -> None:
    """Run statements (separated by "; ") and commit them, printing how long it took."""
    import sqlalchemy as sa

    started = time.perf_counter()
    for part in statement.split("; "):  # asyncpg prepares one statement at a time
        used = {name: value for name, value in params.items() if f":{name}" in part}
        await session.execute(sa.text(part), used)
    await session.commit()
    print(f"    {label}: {time.perf_counter() - started:.1f} s", flush=True)


async def _drop_indexes(session: Any, tables: tuple[str, ...]) -> list[str]:
    """Drop the secondary indexes of `tables` (a bulk load is faster without them); returns
    the statements that make them again."""
    import sqlalchemy as sa

    rows = await session.execute(
        sa.text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "AND tablename = ANY(:tables) AND indexname NOT LIKE 'pk\\_%' "
            "AND indexname NOT LIKE 'uq\\_%'"
        ),
        {"tables": list(tables)},
    )
    found = list(rows)
    for name, _ in found:
        await session.execute(sa.text(f'DROP INDEX "{name}"'))
    await session.commit()
    return [definition for _, definition in found]


async def _vacuum(sessionmaker: Any) -> None:
    """VACUUM ANALYZE, as autovacuum would have by now: statistics and the visibility map
    (without which no index-only scan skips the heap)."""
    import sqlalchemy as sa

    started = time.perf_counter()
    async with sessionmaker.kw["bind"].connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(sa.text("VACUUM ANALYZE"))
    print(f"    VACUUM ANALYZE: {time.perf_counter() - started:.1f} s", flush=True)


async def _seed(sessionmaker: Any, subscribers: int, campaigns: int, events: int) -> Seeded:
    """Fill the database as a busy installation would look (see the module docstring)."""
    import sqlalchemy as sa

    from app.admin import users
    from app.models import AdminRole

    messages = max(100, events // 100)
    per_campaign = min(
        subscribers, max(1, math.ceil((events - 2 * messages) / campaigns / EVENTS_PER_SEND))
    )
    started = time.perf_counter()
    async with sessionmaker() as session:
        await users.create_user(session, OWNER, AdminRole.owner, PASSWORD)
        await session.commit()
        indexes = await _drop_indexes(session, ("subscriptions", "sends", "events", "bounces"))
        await _sql(
            session,
            f"{subscribers:,} subscribers",
            "INSERT INTO subscribers (email, name, attributes, status, created_at, updated_at) "
            "SELECT 'user' || lpad(g::text, 7, '0') || '@example.com', 'User ' || g, "
            "jsonb_build_object('n', g), CASE WHEN g % 50 = 0 THEN 'blocklisted' "
            "ELSE 'enabled' END, now() - make_interval(secs => g), now() "
            "FROM generate_series(1, :n) g",
            n=subscribers,
        )
        await _sql(
            session,
            f"{LISTS} lists and their memberships",
            "INSERT INTO lists (name, description, optin, visibility, created_at, updated_at) "
            "SELECT 'List ' || g, '', 'single', 'public', now(), now() "
            f"FROM generate_series(1, {LISTS}) g; "
            "INSERT INTO subscriptions (subscriber_id, list_id, status, created_at, updated_at) "
            "SELECT s.id, l.id, CASE WHEN s.id % 37 = 0 THEN 'unsubscribed' "
            "WHEN s.id % 101 = 0 THEN 'unconfirmed' ELSE 'confirmed' END, now(), now() "
            "FROM subscribers s JOIN lists l ON s.id % (ARRAY[1, 2, 5, 10, 100])[l.id] = 0",
        )
        await _sql(
            session,
            f"{campaigns} campaigns (the last one running) and 20 templates",
            "INSERT INTO templates (name, subject, html, text, created_at, updated_at) "
            "SELECT 'Template ' || g, 'News', '<p>Hello {{ subscriber.name }}</p>', '', "
            "now(), now() FROM generate_series(1, 20) g; "
            "INSERT INTO campaigns (name, subject, from_email, html, text, status, tracking, "
            "status_reason, audience_size, ledger_base, created_at, updated_at, started_at, "
            "finished_at, track_replies) "
            "SELECT 'Campaign ' || g, 'News ' || g, 'news@example.com', "
            "'<p>Hello {{ subscriber.name }}</p>', '', "
            "CASE WHEN g = :c THEN 'running' ELSE 'finished' END, true, '', :per, 0, "
            "now() - make_interval(hours => (:c - g) * 8 + 1), now(), "
            "now() - make_interval(hours => (:c - g) * 8), "
            "CASE WHEN g = :c THEN NULL ELSE now() - make_interval(hours => (:c - g) * 8) "
            "+ interval '1 hour' END, false FROM generate_series(1, :c) g; "
            "INSERT INTO campaign_lists (campaign_id, list_id) "
            "SELECT id, 1 + id % 5 FROM campaigns",
            c=campaigns,
            per=per_campaign,
        )
        span = max(1, subscribers - per_campaign)
        await _sql(
            session,
            f"{per_campaign * campaigns:,} ledger rows ({per_campaign:,} per campaign)",
            "INSERT INTO sends (campaign_id, subscriber_id, email, status, attempts, last_reply, "
            "sent_at, updated_at) "
            "SELECT c.id, s.id, s.email, CASE WHEN c.status = 'running' AND s.id % 2 = 0 "
            "THEN 'pending' WHEN s.id % 33 = 0 THEN 'bounced' ELSE 'delivered' END, 1, "
            "'250 2.0.0 OK', c.started_at + make_interval(secs => (s.id - lo.v) / 100.0::float8), "
            "c.started_at FROM campaigns c "
            "CROSS JOIN LATERAL (SELECT (1 + ((c.id - 1)::bigint * 7919 * :per) % :span)::int AS v) lo "
            "JOIN subscribers s ON s.id >= lo.v AND s.id < lo.v + :per",
            per=per_campaign,
            span=span,
        )
        await session.execute(sa.text("UPDATE sends SET sent_at = NULL WHERE status = 'pending'"))
        await _sql(
            session,
            "campaign events from the ledger",
            "INSERT INTO events (kind, created_at, email, campaign_id, subscriber_id, send_id, "
            "data) SELECT k.kind, s.sent_at + make_interval(mins => k.n * 7), s.email, "
            "s.campaign_id, s.subscriber_id, s.id, '{}'::jsonb FROM sends s "
            "JOIN (VALUES ('sent', 0), ('delivered', 1), ('bounced', 2), ('opened', 3), "
            "('clicked', 4)) k(kind, n) ON s.sent_at IS NOT NULL AND (k.n = 0 "
            "OR (k.n = 1 AND s.status = 'delivered') OR (k.n = 2 AND s.status = 'bounced') "
            "OR (k.n = 3 AND s.status = 'delivered' AND s.id % 5 < 2) "
            "OR (k.n = 4 AND s.status = 'delivered' AND s.id % 10 = 0))",
        )
        await _sql(
            session,
            f"{messages:,} transactional messages and their events",
            "INSERT INTO messages (stream, status, from_email, to_email, subject, tags, "
            "metadata, mime, attempts, last_reply, created_at, sent_at, updated_at) "
            "SELECT 'transactional', 'delivered', 'app@example.com', "
            "'user' || lpad((g % :subs + 1)::text, 7, '0') || '@example.com', 'Receipt ' || g, "
            "CASE WHEN g % 2 = 0 THEN 'receipt' ELSE 'reset' END, '{}'::jsonb, "
            "convert_to('Subject: Receipt', 'UTF8'), 1, '250 2.0.0 OK', "
            "now() - make_interval(secs => (:m - g) * 60), "
            "now() - make_interval(secs => (:m - g) * 60), now() FROM generate_series(1, :m) g; "
            "INSERT INTO events (kind, created_at, email, message_id, data) "
            "SELECT k.kind, m.created_at, m.to_email, m.id, '{}'::jsonb FROM messages m "
            "CROSS JOIN (VALUES ('queued'), ('delivered')) k(kind) ORDER BY m.id",
            subs=subscribers,
            m=messages,
        )
        await _sql(
            session,
            "event rollups from the events",
            "INSERT INTO event_rollups (day, kind, campaign_id, machine, shard, count) "
            "SELECT created_at::date, kind, c, coalesce((data->>'machine')::boolean, false), 0, "
            "count(*) FROM events CROSS JOIN LATERAL "
            "(VALUES (coalesce(campaign_id, 0)), (-1)) AS k(c) GROUP BY 1, 2, 3, 4",
        )
        await _sql(
            session,
            "bounces, suppressions, webhook deliveries, audit entries",
            "INSERT INTO bounces (created_at, email, kind, source, bounce_class, severity, "
            "status, diagnostic, action, campaign_id, subscriber_id, send_id, raw) "
            "SELECT sent_at, email, 'bounce', 'dsn', 'bad-mailbox', 'hard', '5.1.1', "
            "'550 5.1.1 user unknown', 'failed', campaign_id, subscriber_id, id, '' "
            "FROM sends WHERE status = 'bounced' ORDER BY id; "
            "INSERT INTO suppressions (address, reason, source, scope, created_at) "
            "SELECT DISTINCT email, 'hard bounce', 'bounce', 'all', now() FROM bounces; "
            "INSERT INTO webhook_endpoints (url, description, secret, event_types, enabled, "
            "disabled_reason, created_at, updated_at) SELECT 'https://hooks.example.com/' || g, "
            "'', 'secret', '[]'::jsonb, true, '', now(), now() FROM generate_series(1, 3) g; "
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, status, attempts, "
            "last_error, next_attempt_at, created_at, delivered_at) SELECT 1, id, 'delivered', "
            "1, '', created_at, created_at, created_at FROM events ORDER BY id LIMIT 20000; "
            "INSERT INTO admin_audit (created_at, actor_email, action, target, details) "
            "SELECT now() - make_interval(secs => g), :owner, 'list.rename', 'list:1', "
            "'{}'::jsonb FROM generate_series(1, 5000) g",
            owner=OWNER,
        )
        await _sql(session, f"{len(indexes)} indexes made again", "; ".join(indexes))
        await _vacuum(sessionmaker)

        async def one(query: str) -> int:
            return int(await session.scalar(sa.text(query)) or 0)

        seeded = Seeded(
            finished_campaign=await one("SELECT max(id) FROM campaigns WHERE status = 'finished'"),
            running_campaign=await one("SELECT id FROM campaigns WHERE status = 'running'"),
            subscriber=await one(
                "SELECT subscriber_id FROM sends GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
            ),
            message=await one("SELECT max(id) FROM messages"),
            bounce=await one("SELECT max(id) FROM bounces"),
            sends=await one("SELECT count(*) FROM sends"),
            events=await one("SELECT count(*) FROM events"),
        )
    print(
        f"  seeded {subscribers:,} subscribers, {campaigns} campaigns, {seeded.sends:,} "
        f"ledger rows, {seeded.events:,} events in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return seeded


def _pages(seeded: Seeded) -> list[tuple[str, str]]:
    """(name, path) of every page fetched."""
    c, r = seeded.finished_campaign, seeded.running_campaign
    return [
        ("dashboard", "/admin/"),
        ("dashboard live.json", "/admin/live.json"),
        ("lists", "/admin/lists"),
        ("a list", "/admin/lists/1"),
        ("subscribers", "/admin/subscribers"),
        ("subscribers, later page", "/admin/subscribers?after=500000"),
        ("subscribers, email search", "/admin/subscribers?email=user00123"),
        ("subscribers, no match", "/admin/subscribers?email=nobody-here"),
        (
            "subscribers, list + status",
            "/admin/subscribers?list_id=3&subscription_status=unsubscribed",
        ),
        ("subscribers, blocklisted", "/admin/subscribers?status=blocklisted"),
        ("a subscriber", f"/admin/subscribers/{seeded.subscriber}"),
        ("templates", "/admin/templates"),
        ("campaigns", "/admin/campaigns"),
        ("a campaign", f"/admin/campaigns/{c}"),
        ("a campaign report", f"/admin/campaigns/{c}/report"),
        ("running campaign", f"/admin/campaigns/{r}"),
        ("running progress.json", f"/admin/campaigns/{r}/progress.json"),
        ("messages", "/admin/messages"),
        ("messages, by recipient", "/admin/messages?to=user0000042@example.com"),
        ("messages, by tag", "/admin/messages?tag=reset"),
        ("a message", f"/admin/messages/{seeded.message}"),
        ("bounces", "/admin/bounces"),
        ("bounces, by campaign", f"/admin/bounces?campaign_id={c}"),
        ("a bounce", f"/admin/bounces/{seeded.bounce}"),
        ("suppressions", "/admin/suppressions"),
        ("suppressions, search", "/admin/suppressions?address=user0099"),
        ("webhooks", "/admin/webhooks"),
        ("a webhook", "/admin/webhooks/1"),
        ("MTA queue", "/admin/queue"),
        ("audit log", "/admin/audit"),
        ("users", "/admin/users"),
        ("API keys", "/admin/api-keys"),
        ("account", "/admin/account"),
    ]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


async def _measure(base: str, pages: list[tuple[str, str]], rounds: int) -> dict[str, list[float]]:
    """Sign in, then GET every page once to warm up and `rounds` times measured, in turn."""
    import re

    import httpx

    timings: dict[str, list[float]] = {name: [] for name, _ in pages}
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        form = await client.get("/admin/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        signed = await client.post(
            "/admin/login", data={"email": OWNER, "password": PASSWORD, "csrf": csrf.group(1)}
        )
        assert signed.status_code == 303, signed.text
        for round_ in range(rounds + 1):
            for name, path in pages:
                started = time.perf_counter()
                response = await client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
                if round_:
                    timings[name].append(elapsed)
    return timings


async def _hold(marker: Path, database_url: str, api_url: str) -> None:
    """Keep the servers up (to EXPLAIN a slow page's queries) until `marker` is removed."""
    marker.write_text(f"{database_url}\n{api_url}\n")
    print(f"  holding: database {database_url}, API {api_url}; rm {marker} to finish", flush=True)
    while marker.exists():
        await asyncio.sleep(1)


async def _run(args: argparse.Namespace, tmp: Path) -> list[Row]:
    async with stack(tmp) as st:
        seeded = await _seed(st.sessionmaker, args.subscribers, args.campaigns, args.events)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("WARTA_")} | {
            "WARTA_DATABASE_URL": st.database_url,
            "WARTA_REDIS_URL": st.redis_url,
            "WARTA_SECRET_KEY": "bench-" + "s" * 40,
            "WARTA_VAR_DIR": str(tmp / "var"),
            "WARTA_API_PORT": str(port),
            "WARTA_PUBLIC_URL": f"http://127.0.0.1:{port}",
        }
        log = tmp / "api.log"
        with process(warta("api"), log, env=env) as api:
            await asyncio.to_thread(wait_port, port, api, log, 60)
            pages = _pages(seeded)
            print(f"  {len(pages)} pages x {args.rounds} rounds (load {os.getloadavg()[0]:.2f})")
            timings = await _measure(f"http://127.0.0.1:{port}", pages, args.rounds)
            rows = _report(args, seeded, timings)
            if args.hold:
                await _hold(tmp / "hold", st.database_url, f"http://127.0.0.1:{port}")
    return rows


def _report(args: argparse.Namespace, seeded: Seeded, timings: dict[str, list[float]]) -> list[Row]:
    """Print p50/p95 per page, flag the slow ones; the row for the summary."""
    size = f"{args.subscribers:,} subscribers, {args.campaigns} campaigns, {seeded.events:,} events"
    print(f"\n  {'page':<32} {'p50 ms':>8} {'p95 ms':>8}")
    slow: list[str] = []
    worst = ("", 0.0)
    for name, values in timings.items():
        p50, p95 = statistics.median(values), _percentile(values, 0.95)
        flag = "  ** over 300 ms" if p95 > LIMIT_MS else ""
        if p95 > LIMIT_MS:
            slow.append(name)
        if p95 > worst[1]:
            worst = (name, p95)
        print(f"  {name:<32} {p50:8.1f} {p95:8.1f}{flag}")
    print(f"\n  load after: {os.getloadavg()[0]:.2f}")
    return [
        Row(
            f"admin console pages, p95 of {args.rounds} GETs each ({size})",
            f"every page ≤ {LIMIT_MS:.0f} ms",
            f"slowest {worst[0]} {worst[1]:.0f} ms"
            + (f"; over: {', '.join(slow)}" if slow else ""),
            met=not slow,
        )
    ]


def main(argv: list[str] | None = None) -> list[Row]:
    """Parse arguments, run once, return the rows for `bench/run.py`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int)
    parser.add_argument("--campaigns", type=int)
    parser.add_argument("--events", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--quick", action="store_true", help="a small run, for development")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--hold", action="store_true", help="keep the servers up after measuring, until told"
    )
    args = parser.parse_args(argv if argv is not None else [])
    defaults = QUICK if args.quick else (SUBSCRIBERS, CAMPAIGNS, EVENTS)
    args.subscribers = args.subscribers or defaults[0]
    args.campaigns = args.campaigns or defaults[1]
    args.events = args.events or defaults[2]
    args.rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="warta-admin-bench-"))
    try:
        return asyncio.run(_run(args, tmp))
    finally:
        if args.keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
