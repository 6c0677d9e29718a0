"""Acting on bounces and complaints: suppress, score, unsubscribe, record with evidence, and
pause a campaign whose hard-bounce or complaint rate is too high.

Every source ends here: the MTA's synchronous failures, DSNs and ARF reports from the inbound
Maildir, and relays' webhooks. Each fact is kept as a `bounces` row holding the report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience.suppressions import BOUNCE_SOURCE
from app.bounces import repository as repo
from app.bounces.classify import Classification, Severity, classifier
from app.bounces.ledgers import LEDGERS
from app.core.errors import Invalid, NotFound
from app.core.events import NewEvent, record_events
from app.core.settings import Settings
from app.core.text import storable
from app.mail import identity
from app.mail.identity import Kind
from app.mail.recording import Delivery, LedgerRow, Verdict
from app.models import Bounce, EventKind, SuppressionScope, utcnow
from campaigns import delivery as campaign_delivery
from campaigns import lifecycle

logger = logging.getLogger(__name__)
SOURCE = BOUNCE_SOURCE
COMPLAINT_SOURCE = "complaint"


@dataclass(frozen=True)
class Guard:
    """When a running campaign pauses itself."""

    window: timedelta
    min_sends: int
    hard_rate: float
    complaint_rate: float


@dataclass(frozen=True)
class Policy:
    """What bounces and complaints do, from settings."""

    score_threshold: int
    quiet: timedelta
    complaint_scope: SuppressionScope
    raw_max_bytes: int
    guard: Guard

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy the settings describe."""
        return cls(
            score_threshold=settings.bounce_score_threshold,
            quiet=timedelta(days=settings.bounce_score_quiet_days),
            complaint_scope=SuppressionScope(settings.bounce_complaint_scope),
            raw_max_bytes=settings.bounce_raw_max_bytes,
            guard=Guard(
                window=timedelta(seconds=settings.bounce_guard_window),
                min_sends=settings.bounce_guard_min_sends,
                hard_rate=settings.bounce_guard_hard_rate,
                complaint_rate=settings.bounce_guard_complaint_rate,
            ),
        )


@dataclass(frozen=True)
class Fact:
    """One failure (with its class) or complaint about one address, and its evidence."""

    email: str
    source: str
    """smtp (reply at delivery), dsn, bounce (non-standard), arf, webhook."""
    classification: Classification | None = None
    """None for a complaint."""
    diagnostic: str = ""
    raw: str = ""
    row: LedgerRow | None = None
    feedback_type: str = ""

    @property
    def complaint(self) -> bool:
        """A recipient reported the message as spam (or fraud, …)."""
        return self.classification is None


UNATTRIBUTED = "unattributed"
"""The start of the action of a report kept without acting: no signed clue named its row."""


@dataclass(frozen=True)
class Unattributed:
    """An inbound report that names no row Warta signed: what it claims, and why it is not
    trusted (`forged token`, `unknown row`, `no signed token`)."""

    email: str
    complaint: bool
    source: str
    status: str
    diagnostic: str
    reason: str
    raw: str


def _cut(text: str, limit: int) -> str:
    """At most `limit` bytes of UTF-8, without NUL (PostgreSQL text cannot hold it) or lone
    surrogates (what undecodable header bytes become; no database driver can encode them)."""
    return storable(text).encode("utf-8")[:limit].decode("utf-8", "ignore")


async def apply(
    session: AsyncSession, policy: Policy, facts: Sequence[Fact], *, now: datetime | None = None
) -> list[Bounce]:
    """Act on each fact, keep it with its evidence, mark its row bounced or complained, write
    its event (in one executemany), then run the campaign guard."""
    now = now or utcnow()
    emails = [fact.email.lower().replace("\x00", "")[:320] for fact in facts]
    unknown = [
        e
        for fact, e in zip(facts, emails, strict=True)
        if not (fact.row and fact.row.subscriber_id)
    ]
    known = await repo.subscriber_ids_for(session, unknown)
    found: list[tuple[Fact, str, int | None]] = [
        (fact, email, (fact.row.subscriber_id if fact.row else None) or known.get(email))
        for fact, email in zip(facts, emails, strict=True)
    ]
    actions = await _act(session, policy, found, now)
    # Added after the actions, so that one flush inserts them all (no autoflush per fact).
    records = [
        _record(fact, email, subscriber_id, action, policy, now)
        for (fact, email, subscriber_id), action in zip(found, actions, strict=True)
    ]
    session.add_all(records)
    await session.flush()
    for kind, ledger in LEDGERS.items():
        deliveries = [
            Delivery(
                fact.row.row_id,
                Verdict.BOUNCED if record.kind == "bounce" else Verdict.COMPLAINED,
                record.diagnostic,
            )
            for fact, record in zip(facts, records, strict=True)
            if fact.row is not None and fact.row.kind is kind
        ]
        if deliveries:
            # The bounce's own event below names the row and the class.
            await ledger.record_delivery(session, deliveries, events=False)
    await record_events(session, [_event(record, now) for record in records])
    for campaign_id in sorted({r.campaign_id for r in records if r.campaign_id is not None}):
        await guard(session, policy.guard, campaign_id, now)
    return records


async def keep_unattributed(session: AsyncSession, policy: Policy, item: Unattributed) -> Bounce:
    """Keep the report for an operator (`GET /api/v1/bounces`, action `unattributed: …`) and
    do nothing else: no suppression, no status change, no event, no campaign named, so the
    guard and the stats never count it (anyone can mail the bounce domain)."""
    record = Bounce(
        created_at=utcnow(),
        email=_cut(item.email.lower(), 320)[:320],
        kind="complaint" if item.complaint else "bounce",
        source=item.source[:16],
        status=_cut(item.status, 16)[:16],
        diagnostic=_cut(item.diagnostic, 1000)[:1000],
        action=f"{UNATTRIBUTED}: {item.reason}"[:64],
        raw=_cut(item.raw, policy.raw_max_bytes),
    )
    session.add(record)
    await session.flush()
    return record


def _record(
    fact: Fact, email: str, subscriber_id: int | None, action: str, policy: Policy, now: datetime
) -> Bounce:
    cls = fact.classification
    row = fact.row
    return Bounce(
        created_at=now,
        email=email,
        kind="complaint" if cls is None else "bounce",
        source=fact.source,
        bounce_class=cls.bounce_class.value if cls else "",
        severity=cls.severity.value if cls else "",
        status=cls.status[:16] if cls else "",
        diagnostic=_cut(fact.diagnostic, 1000)[:1000],
        action=action[:64],
        campaign_id=row.campaign_id if row else None,
        subscriber_id=subscriber_id,
        send_id=row.send_id if row else None,
        message_id=row.message_id if row else None,
        raw=_cut(fact.raw, policy.raw_max_bytes),
    )


async def _act(
    session: AsyncSession,
    policy: Policy,
    facts: list[tuple[Fact, str, int | None]],
    now: datetime,
) -> list[str]:
    """Do what each (fact, address, subscriber) calls for, in a few statements for the whole
    batch; returns for each a word saying what was done."""
    actions = ["none"] * len(facts)
    hard: dict[str, str] = {}
    soft: list[int] = []
    for index, (fact, email, subscriber_id) in enumerate(facts):
        if fact.classification is None:
            changed = await repo.unsubscribe_all(session, subscriber_id) if subscriber_id else 0
            reason = f"complaint ({fact.feedback_type or 'abuse'}) via {fact.source}"
            await repo.suppress(session, {email: reason}, policy.complaint_scope, COMPLAINT_SOURCE)
            actions[index] = (
                f"unsubscribed from {changed} lists, suppressed {policy.complaint_scope.value}"
            )
        elif fact.classification.severity is Severity.hard:
            hard[email] = f"{fact.classification.bounce_class.value}: {fact.diagnostic[:300]}"
            actions[index] = "suppressed"
        elif fact.classification.severity is Severity.soft:
            soft.append(index)
    scores = await repo.bump_scores(session, [facts[i][1] for i in soft], now, policy.quiet)
    for index in soft:
        fact, email, _ = facts[index]
        score = scores.get(email, 0)
        actions[index] = f"scored {score}"
        if score >= policy.score_threshold and email not in hard:
            assert fact.classification is not None
            last = f"{fact.classification.bounce_class.value}: {fact.diagnostic[:300]}"
            hard[email] = f"soft-bounce score {score}; last {last}"
            actions[index] = f"scored {score}, suppressed"
    await repo.suppress(session, hard, SuppressionScope.all, SOURCE)
    await repo.blocklist(session, list(hard))
    return actions


def _event(record: Bounce, now: datetime) -> NewEvent:
    data: dict[str, object] = {"bounce_id": record.id, "source": record.source}
    if record.kind == "complaint":
        kind = EventKind.complained
    else:
        kind = EventKind.bounced
        data |= {
            "class": record.bounce_class,
            "kind": record.severity,
            "status": record.status,
            "diagnostic": record.diagnostic[:300],
        }
    data["action"] = record.action
    return NewEvent(
        kind,
        email=record.email,
        campaign_id=record.campaign_id,
        subscriber_id=record.subscriber_id,
        send_id=record.send_id,
        message_id=record.message_id,
        data=data,
        at=now,
    )


async def guard(session: AsyncSession, rules: Guard, campaign_id: int, now: datetime) -> bool:
    """Pause the campaign if its recent hard-bounce or complaint rate passed a threshold."""
    sent, hard, complaints = repo.guard_rates(campaign_id, now - rules.window)
    too_many_hard = hard > sent * rules.hard_rate
    too_many_complaints = complaints > sent * rules.complaint_rate
    minutes = rules.window.total_seconds() / 60
    reason = sa.case(
        (
            too_many_hard,
            f"bounce guard: hard bounces over {rules.hard_rate:.1%} "
            f"of the sends in the last {minutes:.0f} min",
        ),
        else_=f"bounce guard: complaints over {rules.complaint_rate:.1%} "
        f"of the sends in the last {minutes:.0f} min",
    )
    condition = sa.and_(sent >= rules.min_sends, sa.or_(too_many_hard, too_many_complaints))
    paused = await lifecycle.pause_when(session, campaign_id, condition, reason)
    if paused:
        logger.warning("campaign %s paused by the bounce guard", campaign_id)
    return paused


async def resolve(
    session: AsyncSession,
    kind: Kind | None,
    row_id: int | None,
    email: str,
    campaign_id: int | None = None,
) -> LedgerRow | None:
    """The ledger row a report is about: the signed row if given, else the latest campaign
    row for the address (within the campaign, when one is named)."""
    if kind is not None and row_id is not None:
        ledger = LEDGERS.get(kind)
        return (await ledger.rows(session, [row_id])).get(row_id) if ledger else None
    if not email:
        return None
    return await campaign_delivery.latest_row(session, email, campaign_id)


@dataclass(frozen=True)
class WebhookReport:
    """A relay's report, already validated."""

    email: str
    complaint: bool
    status: str
    diagnostic: str
    message_id: str | None
    campaign_id: int | None
    feedback_type: str
    raw: str


async def report(session: AsyncSession, settings: Settings, item: WebhookReport) -> Bounce:
    """Classify and act on a relay's report. The relay is trusted (it holds an API key), so an
    address Warta never mailed is still acted on; a Message-ID must be one Warta issued."""
    row = None
    if item.message_id:
        parsed = identity.parse_message_id(settings.effective_secret_key(), item.message_id)
        if parsed is None:
            raise Invalid("message_id is not a Message-ID this Warta instance issued")
        row = await resolve(session, parsed[0], parsed[1], "")
        if row is None:
            raise NotFound(f"message_id {item.message_id} names no message")
    else:
        row = await resolve(session, None, None, item.email, item.campaign_id)
    classification = None
    if not item.complaint:
        rules = classifier(settings.bounce_rules)
        classification = rules.classify(item.diagnostic, item.status, permanent=None)
    fact = Fact(
        email=row.email if row else item.email,
        source="webhook",
        classification=classification,
        diagnostic=item.diagnostic or item.status,
        raw=item.raw,
        row=row,
        feedback_type=item.feedback_type,
    )
    policy = Policy.from_settings(settings)
    return (await apply(session, policy, [fact]))[0]


async def get(session: AsyncSession, bounce_id: int) -> Bounce:
    """One bounce record with its raw report, or NotFound."""
    found = await session.get(Bounce, bounce_id)
    if found is None:
        raise NotFound(f"bounce {bounce_id} does not exist")
    return found


async def page(
    session: AsyncSession, after_id: int, limit: int, email: str | None, campaign_id: int | None
) -> list[Bounce]:
    """Bounce records after a cursor, optionally for one address or campaign."""
    return await repo.page(session, after_id, limit, email, campaign_id)


@dataclass(frozen=True)
class CampaignCounts:
    """A campaign's bounces per class and severity, and its complaints."""

    by_class: dict[str, int]
    hard: int
    soft: int
    informational: int
    complaints: int


async def campaign_counts(session: AsyncSession, campaign_id: int) -> CampaignCounts:
    """Counts of a campaign's bounce records."""
    by_class: dict[str, int] = {}
    severities = {"hard": 0, "soft": 0, "informational": 0}
    complaints = 0
    for kind, severity, bounce_class, count in await repo.counts(session, campaign_id):
        if kind == "complaint":
            complaints += count
            continue
        by_class[bounce_class] = by_class.get(bounce_class, 0) + count
        severities[severity] = severities.get(severity, 0) + count
    return CampaignCounts(by_class, complaints=complaints, **severities)
