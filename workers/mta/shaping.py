"""Traffic shaping per destination: pace, connection limits, backoff on throttling, retries.

A destination is the set of MX hosts that serve a group of domains, keyed by the router
as the comma-joined host names. Each destination gets a `DestinationShaper` built from the
most specific matching rule in `shaping.toml` (built-in) and the operator's rules file.
Pacing is GCRA: one theoretical arrival time per destination, moved on by `1 / rate` per
message, with `burst` messages allowed at once after an idle spell.

A throttling reply (classified by `throttle_rules.toml`) halves the current rate, down to
the rule's floor, and suspends the destination for a cooldown that doubles on each further
throttle up to `max_cooldown`. Once the destination accepts mail again, each success at
least `ramp_interval` after the previous step adds `ramp_step` of the configured rate,
until the configured rate is reached and the cooldown resets.

Pure logic: no I/O besides reading the TOML files, and every time comes from an injectable
clock (wall-clock seconds by default, so `suspended_until` means something to the queue
API).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import random
import re
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from app.mail.result import REPLY_CLASS_SUCCESS, parse_enhanced_status

BUILTIN_RULES = Path(__file__).with_name("shaping.toml")
BUILTIN_THROTTLE_RULES = Path(__file__).with_name("throttle_rules.toml")
DEFAULT_RULE = "default"

Clock = Callable[[], float]

_GLOB_CHARS = frozenset("*?[")


class RulesError(ValueError):
    """A shaping or throttle rules file that cannot be used."""


# --- shaping rules ----------------------------------------------------------------------


@dataclass(frozen=True)
class ShapingRule:
    """Limits and backoff settings for the destinations a rule matches."""

    name: str
    match: tuple[str, ...] = ()
    max_connections: int = 5
    messages_per_connection: int = 100
    messages_per_second: float = 10.0
    burst: int = 1
    min_rate: float = 0.1
    cooldown: float = 60.0
    max_cooldown: float = 3600.0
    ramp_interval: float = 60.0
    ramp_step: float = 0.1
    operator: bool = field(default=False, compare=False)
    """Its `match` comes from the operator's file, so it wins ties with built-in patterns."""

    def __post_init__(self) -> None:
        positive = ("max_connections", "messages_per_connection", "messages_per_second")
        for name in (*positive, "burst", "min_rate", "cooldown", "ramp_interval", "ramp_step"):
            if getattr(self, name) <= 0:
                raise RulesError(f"rule {self.name!r}: {name} must be positive")
        if self.max_cooldown < self.cooldown:
            raise RulesError(f"rule {self.name!r}: max_cooldown must be at least cooldown")

    def specificity(self, hosts: Iterable[str]) -> int | None:
        """Literal characters of this rule's best pattern matching any host; None: no match."""
        best: int | None = None
        for pattern in self.match:
            if any(_pattern_matches(pattern, host) for host in hosts):
                literal = sum(char not in _GLOB_CHARS for char in pattern)
                best = literal if best is None else max(best, literal)
        return best


_RULE_FIELDS = {f.name for f in fields(ShapingRule)} - {"name", "operator"}


def _pattern_matches(pattern: str, host: str) -> bool:
    pattern = pattern.lower()
    if _GLOB_CHARS.intersection(pattern):
        return fnmatch.fnmatchcase(host, pattern)
    return pattern in host


def destination_hosts(key: str) -> tuple[str, ...]:
    """The MX host names in a destination key, lower-cased, without trailing dots."""
    return tuple(host.strip().rstrip(".").lower() for host in key.split(",") if host.strip())


class ShapingRules:
    """The rule set: picks the rule for a destination key."""

    def __init__(self, rules: Iterable[ShapingRule]) -> None:
        self._rules = list(rules)
        names = [rule.name for rule in self._rules]
        if DEFAULT_RULE not in names:
            raise RulesError(f"no {DEFAULT_RULE!r} rule")
        self.default = self._rules[names.index(DEFAULT_RULE)]

    @property
    def rules(self) -> list[ShapingRule]:
        """Every rule, the default included."""
        return list(self._rules)

    def rule_for(self, key: str) -> ShapingRule:
        """The most specific rule matching the key's MX hosts; operator patterns win ties."""
        hosts = destination_hosts(key)
        best: tuple[int, bool] | None = None
        chosen = self.default
        for rule in self._rules:
            score = rule.specificity(hosts)
            if score is not None and (best is None or (score, rule.operator) > best):
                best, chosen = (score, rule.operator), rule
        return chosen


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise RulesError(f"{path}: {error}") from error


def _rule_tables(path: Path) -> dict[str, dict[str, Any]]:
    data = _read_toml(path)
    unknown = set(data) - {"rules"}
    if unknown:
        raise RulesError(f"{path}: unknown top-level keys {sorted(unknown)}")
    tables = data.get("rules", {})
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise RulesError(f"{path}: rules.{name} must be a table")
        bad = set(table) - _RULE_FIELDS
        if bad:
            raise RulesError(f"{path}: rules.{name}: unknown fields {sorted(bad)}")
    return dict(tables)


def load_rules(operator_file: Path | None = None, *, builtin: Path = BUILTIN_RULES) -> ShapingRules:
    """The built-in rules, with the operator's file changing or adding rules by name."""
    tables = _rule_tables(builtin)
    operator_names: set[str] = set()
    if operator_file is not None:
        for name, table in _rule_tables(operator_file).items():
            if "match" in table:  # the operator's own patterns win ties
                operator_names.add(name)
            tables[name] = {**tables.get(name, {}), **table}
    if DEFAULT_RULE not in tables:
        raise RulesError(f"{builtin}: no [rules.{DEFAULT_RULE}]")
    inherited = {key: value for key, value in tables[DEFAULT_RULE].items() if key != "match"}
    rules = []
    for name, table in tables.items():
        values = {**inherited, **table}
        values["match"] = tuple(values.get("match", ()))
        try:
            rules.append(ShapingRule(name=name, operator=name in operator_names, **values))
        except TypeError as error:
            raise RulesError(f"rule {name!r}: {error}") from error
    return ShapingRules(rules)


# --- throttle classification --------------------------------------------------------------


@dataclass(frozen=True)
class ThrottleRule:
    """One kind of throttling reply; every condition given must hold."""

    name: str
    codes: frozenset[int] = frozenset()
    enhanced: tuple[str, ...] = ()
    text: tuple[re.Pattern[str], ...] = ()

    def matches(self, code: int, enhanced_status: str | None, text: str) -> bool:
        """Whether the reply is this kind of throttling."""
        if self.codes and code not in self.codes:
            return False
        if self.enhanced and not (enhanced_status and enhanced_status.startswith(self.enhanced)):
            return False
        return not self.text or any(pattern.search(text) for pattern in self.text)


class ThrottleRules:
    """Classifies SMTP replies as throttling or not."""

    def __init__(self, rules: Iterable[ThrottleRule]) -> None:
        self.rules = list(rules)

    def classify(self, code: int, enhanced_status: str | None, text: str) -> str | None:
        """The name of the first throttle rule the reply matches, or None."""
        if not 400 <= code < 600:
            return None
        status = enhanced_status or parse_enhanced_status(text)
        for rule in self.rules:
            if rule.matches(code, status, text):
                return rule.name
        return None


def _throttle_rules(path: Path) -> list[ThrottleRule]:
    data = _read_toml(path)
    unknown = set(data) - {"rule"}
    if unknown:
        raise RulesError(f"{path}: unknown top-level keys {sorted(unknown)}")
    rules = []
    for table in data.get("rule", []):
        name = table.get("name")
        bad = set(table) - {"name", "codes", "enhanced", "text"}
        if not isinstance(name, str) or bad:
            raise RulesError(
                f"{path}: rule {name!r} needs a name and no other keys than codes, enhanced, text"
            )
        try:
            rule = ThrottleRule(
                name=name,
                codes=frozenset(int(code) for code in table.get("codes", ())),
                enhanced=tuple(str(prefix) for prefix in table.get("enhanced", ())),
                text=tuple(re.compile(text, re.IGNORECASE) for text in table.get("text", ())),
            )
        except (TypeError, ValueError, re.error) as error:
            raise RulesError(f"{path}: rule {name!r}: {error}") from error
        if not (rule.codes or rule.enhanced or rule.text):
            raise RulesError(f"{path}: rule {name!r} has no condition")
        rules.append(rule)
    return rules


def load_throttle_rules(
    operator_file: Path | None = None, *, builtin: Path = BUILTIN_THROTTLE_RULES
) -> ThrottleRules:
    """The built-in throttle rules plus the operator's; a same-named rule replaces one."""
    rules = {rule.name: rule for rule in _throttle_rules(builtin)}
    if operator_file is not None:
        rules.update((rule.name, rule) for rule in _throttle_rules(operator_file))
    return ThrottleRules(rules.values())


# --- one destination ----------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionLimits:
    """How many SMTP sessions a destination may have open, and how long each may live."""

    max_connections: int
    messages_per_connection: int


@dataclass(frozen=True)
class DestinationState:
    """What the queue API shows of a destination."""

    key: str
    rule: str
    configured_rate: float
    current_rate: float
    suspended_until: float | None
    manually_suspended: bool
    connections_in_use: int
    max_connections: int
    messages_per_connection: int
    throttles: int
    last_throttle: str | None


class DestinationShaper:
    """Pace, connection accounting and automatic backoff for one destination."""

    def __init__(
        self,
        key: str,
        rule: ShapingRule,
        throttle_rules: ThrottleRules,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.key = key
        self.rule = rule
        self._throttle_rules = throttle_rules
        self._clock = clock
        self.current_rate = rule.messages_per_second
        self.suspended_until: float | None = None
        self.manually_suspended = False
        self.throttles = 0
        self.last_throttle: str | None = None
        self._in_flight = 0
        self._tat = -math.inf
        self._last_ramp = -math.inf

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    @property
    def connections_in_use(self) -> int:
        """SMTP sessions busy with this destination's mail.

        The transport's pool for the destination has `max_connections` sessions, so
        transactions beyond that wait for a session rather than open another.
        """
        return min(self._in_flight, self.rule.max_connections)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[ConnectionLimits]:
        """Count one transaction in flight; yields the limits its transport must keep."""
        self._in_flight += 1
        try:
            yield ConnectionLimits(self.rule.max_connections, self.rule.messages_per_connection)
        finally:
            self._in_flight -= 1

    def is_suspended(self, now: float | None = None) -> bool:
        """Whether no new connection or message may start now."""
        return self.suspended_until is not None and self._now(now) < self.suspended_until

    # pacing

    def next_send_at(self, now: float | None = None) -> float:
        """The earliest time the next message may go (≥ now)."""
        now = self._now(now)
        earliest = max(now, self._tat - self._tolerance())
        if self.suspended_until is not None:
            earliest = max(earliest, self.suspended_until)
        return earliest

    def try_send(self, now: float | None = None) -> bool:
        """Take one message's place in the pace if it may go now."""
        now = self._now(now)
        if self.next_send_at(now) > now:
            return False
        self._tat = max(self._tat, now) + 1 / self.current_rate
        return True

    def _tolerance(self) -> float:
        return (self.rule.burst - 1) / self.current_rate

    # replies and backoff

    def on_reply(
        self, code: int, enhanced_status: str | None, text: str, now: float | None = None
    ) -> str | None:
        """Adapt to a reply from the destination; the throttle rule's name if it throttled."""
        now = self._now(now)
        if code // 100 == REPLY_CLASS_SUCCESS:
            self._ramp_up(now)
            return None
        reason = self._throttle_rules.classify(code, enhanced_status, text)
        if reason is not None:
            self._throttle(reason, now)
        return reason

    def _throttle(self, reason: str, now: float) -> None:
        # Sessions in flight see the same refusal; one suspension window counts once.
        if self.is_suspended(now) and not self.manually_suspended:
            return
        self.throttles += 1
        self.last_throttle = reason
        self.current_rate = max(self.rule.min_rate, self.current_rate / 2)
        cooldown = min(
            self.rule.max_cooldown, self.rule.cooldown * 2 ** min(self.throttles - 1, 32)
        )
        until = now + cooldown
        if self.suspended_until is None or self.suspended_until < until:
            self.suspended_until = until
            self.manually_suspended = False
        # No burst after the pause: the first message at the end of it, then the new pace.
        self._tat = self.suspended_until + self._tolerance()
        self._last_ramp = self.suspended_until

    def _ramp_up(self, now: float) -> None:
        configured = self.rule.messages_per_second
        if self.current_rate >= configured or now - self._last_ramp < self.rule.ramp_interval:
            return
        self.current_rate = min(configured, self.current_rate + self.rule.ramp_step * configured)
        self._last_ramp = now
        if self.current_rate >= configured:
            self.throttles = 0

    def suspend(self, until: float) -> None:
        """Hold the destination until `until` (clock time), as an operator asked."""
        self.suspended_until = until
        self.manually_suspended = True

    def resume(self, now: float | None = None) -> None:
        """Lift any suspension now; the current rate stays where backoff left it."""
        now = self._now(now)
        self.suspended_until = None
        self.manually_suspended = False
        self._tat = min(self._tat, now + self._tolerance())

    def state(self, now: float | None = None) -> DestinationState:
        """A snapshot for the queue API; an expired suspension shows as none."""
        return DestinationState(
            key=self.key,
            rule=self.rule.name,
            configured_rate=self.rule.messages_per_second,
            current_rate=self.current_rate,
            suspended_until=self.suspended_until if self.is_suspended(now) else None,
            manually_suspended=self.manually_suspended and self.is_suspended(now),
            connections_in_use=self.connections_in_use,
            max_connections=self.rule.max_connections,
            messages_per_connection=self.rule.messages_per_connection,
            throttles=self.throttles,
            last_throttle=self.last_throttle,
        )


# --- the registry -------------------------------------------------------------------------


class Shaping:
    """Every destination's shaper, created on first use from the matching rule."""

    def __init__(
        self,
        rules: ShapingRules | None = None,
        throttle_rules: ThrottleRules | None = None,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.rules = rules if rules is not None else load_rules()
        self.throttle_rules = (
            throttle_rules if throttle_rules is not None else load_throttle_rules()
        )
        self._clock = clock
        self._destinations: dict[str, DestinationShaper] = {}

    @classmethod
    def from_files(
        cls,
        rules_file: Path | None = None,
        throttle_rules_file: Path | None = None,
        *,
        clock: Clock = time.time,
    ) -> Shaping:
        """Built-in rules extended by the operator's files."""
        return cls(load_rules(rules_file), load_throttle_rules(throttle_rules_file), clock=clock)

    def for_destination(self, key: str) -> DestinationShaper:
        """The shaper of the destination `key` (comma-joined MX hosts)."""
        shaper = self._destinations.get(key)
        if shaper is None:
            rule = self.rules.rule_for(key)
            shaper = DestinationShaper(key, rule, self.throttle_rules, clock=self._clock)
            self._destinations[key] = shaper
        return shaper

    def snapshot(self, now: float | None = None) -> dict[str, DestinationState]:
        """Every known destination's state, by key."""
        return {key: shaper.state(now) for key, shaper in self._destinations.items()}


# --- retry schedule -----------------------------------------------------------------------


class Uniform(Protocol):
    """The part of `random` the retry schedule uses."""

    def uniform(self, a: float, b: float, /) -> float: ...


def next_retry_delay(
    attempt: int, *, minimum: float, maximum: float, jitter: float = 0.1, rng: Uniform = random
) -> float:
    """Seconds before retry number `attempt` (1 = first): doubling from `minimum`, capped.

    The capped delay is spread by ± `jitter` (a fraction) so deferred messages do not
    return in lock-step; the cap may thus be exceeded by at most that fraction.
    """
    if attempt < 1:
        raise ValueError("attempt must be at least 1")
    if not 0 < minimum <= maximum:
        raise ValueError("need 0 < minimum <= maximum")
    if not 0 <= jitter < 1:
        raise ValueError("jitter must be in [0, 1)")
    base = min(maximum, minimum * 2.0 ** min(attempt - 1, 1000))
    return base * (1 + rng.uniform(-jitter, jitter))


def expired(first_attempt_at: float, now: float, lifetime: float) -> bool:
    """Whether a message first tried at `first_attempt_at` has outlived `lifetime` seconds."""
    return now - first_attempt_at >= lifetime
