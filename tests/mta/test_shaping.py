"""Per-destination shaping: rules, pace, connection limits, throttling backoff, retry schedule."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from workers.mta.shaping import (
    BUILTIN_RULES,
    BUILTIN_THROTTLE_RULES,
    ConnectionLimits,
    DestinationShaper,
    RulesError,
    Shaping,
    ShapingRule,
    ThrottleRules,
    expired,
    load_rules,
    load_throttle_rules,
    next_retry_delay,
)

GMAIL = "alt1.gmail-smtp-in.l.google.com,alt2.gmail-smtp-in.l.google.com,gmail-smtp-in.l.google.com"
WORKSPACE = "aspmx.l.google.com,alt1.aspmx.l.google.com"
HOTMAIL = "hotmail-com.olc.protection.outlook.com"
M365 = "example-com.mail.protection.outlook.com"
YAHOO = "mta5.am0.yahoodns.net,mta6.am0.yahoodns.net,mta7.am0.yahoodns.net"
AOL = "mx-aol.mail.gm0.yahoodns.net"
ICLOUD = "mx01.mail.icloud.com,mx02.mail.icloud.com"
OTHER = "mx.example.org"


class FakeClock:
    """Seconds that move only when a test moves them."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def throttle_rules() -> ThrottleRules:
    return load_throttle_rules()


def shaper_for(
    clock: FakeClock, throttle_rules: ThrottleRules, **limits: float
) -> DestinationShaper:
    values: dict[str, float] = {
        "max_connections": 2,
        "messages_per_connection": 3,
        "messages_per_second": 10.0,
        "burst": 1,
        "min_rate": 0.1,
        "cooldown": 60.0,
        "max_cooldown": 3600.0,
        "ramp_interval": 10.0,
        "ramp_step": 0.1,
    }
    values.update(limits)
    rule = ShapingRule(name="test", **values)  # type: ignore[arg-type]
    return DestinationShaper(OTHER, rule, throttle_rules, clock=clock)


# --- rules ------------------------------------------------------------------------------


def test_builtin_data_files_ship_next_to_the_module() -> None:
    assert BUILTIN_RULES.name == "shaping.toml" and BUILTIN_RULES.is_file()
    assert BUILTIN_THROTTLE_RULES.name == "throttle_rules.toml"
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"*.toml"' in pyproject


@pytest.mark.parametrize(
    ("key", "rule"),
    [
        (GMAIL, "gmail"),
        (WORKSPACE, "gmail"),
        (HOTMAIL, "outlook"),
        (M365, "outlook"),
        (YAHOO, "yahoo"),
        (AOL, "yahoo"),
        (ICLOUD, "icloud"),
        (OTHER, "default"),
        ("GMAIL-SMTP-IN.L.GOOGLE.COM.", "gmail"),
        ("google.com.evil.example", "default"),
    ],
)
def test_destinations_match_rules_by_mx_host(key: str, rule: str) -> None:
    assert load_rules().rule_for(key).name == rule


def test_builtin_rules_are_sensible() -> None:
    rules = {rule.name: rule for rule in load_rules().rules}
    assert set(rules) == {"default", "gmail", "outlook", "yahoo", "icloud"}
    for rule in rules.values():
        assert 1 <= rule.max_connections <= 20
        assert rule.messages_per_second > rule.min_rate
        assert rule.cooldown <= rule.max_cooldown == 3600
    # Providers inherit the backoff settings they do not set from the default rule.
    assert rules["gmail"].cooldown == rules["default"].cooldown
    assert rules["yahoo"].cooldown > rules["default"].cooldown


def test_operator_rules_override_and_extend(tmp_path: Path) -> None:
    operator = tmp_path / "shaping.toml"
    operator.write_text(
        """
[rules.default]
cooldown = 30.0

[rules.gmail]
messages_per_second = 2.5

[rules.corp]
match = ["mx?.corp.example"]
max_connections = 1

[rules.google-workspace-eu]
match = ["*.google.com"]
messages_per_second = 1.0
"""
    )
    rules = load_rules(operator)
    gmail = rules.rule_for(GMAIL)
    # Same specificity as the built-in gmail pattern: the operator's rule wins the tie.
    assert gmail.name == "google-workspace-eu" and gmail.messages_per_second == 1.0
    builtin_gmail = next(rule for rule in rules.rules if rule.name == "gmail")
    assert builtin_gmail.messages_per_second == 2.5
    assert builtin_gmail.max_connections == 10  # fields not overridden are kept
    corp = rules.rule_for("mx1.corp.example,mx2.corp.example")
    assert corp.name == "corp" and corp.max_connections == 1
    assert corp.cooldown == 30.0 and corp.messages_per_connection == 100  # from default
    assert rules.rule_for(HOTMAIL).cooldown == 30.0
    assert rules.rule_for(YAHOO).cooldown == 300.0  # set by its own rule


def test_more_specific_pattern_wins(tmp_path: Path) -> None:
    operator = tmp_path / "shaping.toml"
    operator.write_text('[rules.slow-tenant]\nmatch = ["example-com.mail.protection"]\n')
    rules = load_rules(operator)
    assert rules.rule_for(M365).name == "slow-tenant"
    assert rules.rule_for(HOTMAIL).name == "outlook"


@pytest.mark.parametrize(
    "content",
    [
        "[rules.gmail]\nmessages_per_secnd = 3\n",
        "[rules.gmail]\nmessages_per_second = 0\n",
        "[rules.gmail]\nmessages_per_second = 'fast'\n",
        "[rules.gmail]\ncooldown = 7200.0\n",
        "[limits]\nx = 1\n",
        "[rules\n",
    ],
)
def test_bad_operator_rules_are_refused(tmp_path: Path, content: str) -> None:
    operator = tmp_path / "shaping.toml"
    operator.write_text(content)
    with pytest.raises(RulesError):
        load_rules(operator)


def test_missing_operator_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError):
        load_rules(tmp_path / "absent.toml")


# --- pace and connections ----------------------------------------------------------------


def test_rate_is_honoured(clock: FakeClock, throttle_rules: ThrottleRules) -> None:
    shaper = shaper_for(clock, throttle_rules, messages_per_second=4.0)
    start = clock.now
    sent_at: list[float] = []
    while len(sent_at) < 9:
        clock.now = shaper.next_send_at()
        assert shaper.try_send()
        sent_at.append(clock.now - start)
    assert sent_at == pytest.approx([i * 0.25 for i in range(9)])
    assert not shaper.try_send()  # the next one is not due yet


def test_burst_after_idle_then_pace(clock: FakeClock, throttle_rules: ThrottleRules) -> None:
    shaper = shaper_for(clock, throttle_rules, messages_per_second=2.0, burst=3)
    assert [shaper.try_send() for _ in range(4)] == [True, True, True, False]
    assert shaper.next_send_at() == pytest.approx(clock.now + 0.5)
    clock.advance(10)  # idle: the burst comes back, but no more than the burst
    assert [shaper.try_send() for _ in range(4)] == [True, True, True, False]


def test_transactions_in_flight_count_as_connections_up_to_the_limit(
    clock: FakeClock, throttle_rules: ThrottleRules
) -> None:
    shaper = shaper_for(clock, throttle_rules, max_connections=2, messages_per_connection=7)
    with shaper.transaction() as limits:
        assert limits == ConnectionLimits(max_connections=2, messages_per_connection=7)
        assert shaper.connections_in_use == 1
        with shaper.transaction(), shaper.transaction():
            # The third waits for one of the pool's two sessions: two are in use.
            assert shaper.state().connections_in_use == 2
    assert shaper.connections_in_use == 0


def test_manual_suspend_and_resume(clock: FakeClock, throttle_rules: ThrottleRules) -> None:
    shaper = shaper_for(clock, throttle_rules)
    until = clock.now + 600
    shaper.suspend(until)
    assert shaper.is_suspended()
    assert not shaper.try_send()
    assert shaper.next_send_at() == until
    state = shaper.state()
    assert state.suspended_until == until and state.manually_suspended
    clock.advance(5)
    shaper.resume()
    assert not shaper.is_suspended() and shaper.try_send()
    assert shaper.state().suspended_until is None


def test_expired_suspension_lifts_itself(clock: FakeClock, throttle_rules: ThrottleRules) -> None:
    shaper = shaper_for(clock, throttle_rules)
    shaper.suspend(clock.now + 30)
    clock.advance(30)
    assert not shaper.is_suspended() and shaper.state().suspended_until is None
    assert shaper.try_send()


# --- throttle classification -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "enhanced", "text", "rule"),
    [
        (
            421,
            "4.7.28",
            "Our system has detected an unusual rate of unsolicited mail originating "
            "from your IP address.",
            "service-not-available",
        ),
        (
            550,
            "5.7.28",
            "Our system has detected an unusual rate of unsolicited mail.",
            "gmail-unusual-rate",
        ),
        (
            452,
            "",
            "4.7.0 Our system has detected that this message is temporarily rate limited",
            "temporarily-rate-limited",
        ),
        (
            451,
            "4.7.650",
            "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.",
            "transient-policy",
        ),
        (452, "4.7.650", "Try again later.", "outlook-4.7.650"),
        (
            452,
            "4.3.2",
            "Server busy. Please try again later from [192.0.2.1]. (S3150) [BN1NAM02FT012]",
            "outlook-s3150",
        ),
        (
            452,
            None,
            "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected "
            "volume or user complaints",
            "yahoo-tss04",
        ),
        (
            554,
            None,
            "[TS03] All messages from 192.0.2.1 will be permanently deferred",
            "yahoo-ts03",
        ),
        (452, None, "Too many connections from your IP", "too-many-connections"),
        (
            554,
            None,
            "resimta-po-12v.sys.comcast.net too many sessions from 192.0.2.1",
            "too-many-connections",
        ),
        (450, "4.7.1", "Greylisted, please try again later", "transient-policy"),
        (421, None, "Service not available, closing transmission channel", "service-not-available"),
    ],
)
def test_throttling_replies_are_recognised(
    throttle_rules: ThrottleRules, code: int, enhanced: str | None, text: str, rule: str
) -> None:
    assert throttle_rules.classify(code, enhanced, text) == rule


@pytest.mark.parametrize(
    ("code", "enhanced", "text"),
    [
        (250, "2.0.0", "OK: queued as 12345"),
        (250, "2.0.0", "OK rate limited yesterday, fine today"),  # success never throttles
        (450, "4.2.2", "Mailbox full"),
        (451, "4.3.0", "Local error in processing"),
        (452, "4.5.3", "Too many recipients"),
        (550, "5.1.1", "The email account that you tried to reach does not exist."),
        (552, "5.2.2", "Too many messages in mailbox"),
        (554, "5.7.1", "Message rejected as spam"),
        (451, None, "4.4.0 DNS lookup failed; contents hosts03.example"),
    ],
)
def test_other_replies_are_not_throttling(
    throttle_rules: ThrottleRules, code: int, enhanced: str | None, text: str
) -> None:
    assert throttle_rules.classify(code, enhanced, text) is None


def test_operator_throttle_rules_extend_and_replace(tmp_path: Path) -> None:
    operator = tmp_path / "throttle.toml"
    operator.write_text(
        """
[[rule]]
name = "service-not-available"
codes = [421]
text = ["busy"]

[[rule]]
name = "acme"
codes = [452]
text = ['slow down, friend']
"""
    )
    rules = load_throttle_rules(operator)
    assert rules.classify(452, None, "Please SLOW DOWN, friend") == "acme"
    assert rules.classify(421, None, "Service shutting down") is None
    assert rules.classify(421, None, "Server busy") == "service-not-available"


@pytest.mark.parametrize(
    "content",
    [
        '[[rule]]\nname = "empty"\n',
        "[[rule]]\ncodes = [421]\n",
        '[[rule]]\nname = "x"\ntext = ["(unclosed"]\n',
        '[[rule]]\nname = "x"\ncodes = [421]\nscore = 3\n',
    ],
)
def test_bad_throttle_rules_are_refused(tmp_path: Path, content: str) -> None:
    operator = tmp_path / "throttle.toml"
    operator.write_text(content)
    with pytest.raises(RulesError):
        load_throttle_rules(operator)


# --- backoff -----------------------------------------------------------------------------


def test_throttle_halves_rate_and_suspends(clock: FakeClock, throttle_rules: ThrottleRules) -> None:
    shaper = shaper_for(clock, throttle_rules, messages_per_second=10.0, burst=5)
    assert shaper.on_reply(421, "4.7.28", "unusual rate") == "service-not-available"
    assert shaper.current_rate == 5.0
    assert shaper.suspended_until == clock.now + 60
    assert not shaper.try_send()
    assert shaper.next_send_at() == clock.now + 60
    state = shaper.state()
    assert state.current_rate == 5.0 and state.configured_rate == 10.0
    assert state.suspended_until == clock.now + 60 and not state.manually_suspended
    assert state.throttles == 1 and state.last_throttle == "service-not-available"
    # After the pause: no burst, the halved pace from the first message on.
    clock.advance(60)
    assert shaper.try_send() and not shaper.try_send()
    assert shaper.next_send_at() == pytest.approx(clock.now + 0.2)


def test_non_throttling_replies_leave_the_rate(
    clock: FakeClock, throttle_rules: ThrottleRules
) -> None:
    shaper = shaper_for(clock, throttle_rules)
    for code, enhanced, text in [
        (550, "5.1.1", "User unknown"),
        (450, "4.2.2", "Mailbox full"),
        (554, "5.7.1", "Spam"),
        (250, "2.0.0", "OK"),
    ]:
        assert shaper.on_reply(code, enhanced, text) is None
    assert shaper.current_rate == 10.0
    assert shaper.suspended_until is None and shaper.throttles == 0


def test_in_flight_throttles_count_once(clock: FakeClock, throttle_rules: ThrottleRules) -> None:
    shaper = shaper_for(clock, throttle_rules)
    for _ in range(5):  # every open session hears the same refusal
        shaper.on_reply(421, None, "Too many connections")
        clock.advance(0.1)
    assert shaper.current_rate == 5.0 and shaper.throttles == 1


def test_rate_is_floored(clock: FakeClock, throttle_rules: ThrottleRules) -> None:
    shaper = shaper_for(clock, throttle_rules, messages_per_second=1.0, min_rate=0.1)
    rates = []
    for _ in range(6):
        shaper.on_reply(451, "4.7.650", "temporarily rate limited")
        rates.append(shaper.current_rate)
        clock.now = shaper.suspended_until or clock.now
    assert rates == pytest.approx([0.5, 0.25, 0.125, 0.1, 0.1, 0.1])


def test_cooldown_grows_on_repeated_throttles(
    clock: FakeClock, throttle_rules: ThrottleRules
) -> None:
    shaper = shaper_for(clock, throttle_rules, cooldown=60.0, max_cooldown=3600.0)
    cooldowns = []
    for _ in range(8):
        shaper.on_reply(421, "4.7.0", "[TSS04] deferred")
        assert shaper.suspended_until is not None
        cooldowns.append(shaper.suspended_until - clock.now)
        clock.now = shaper.suspended_until
    assert cooldowns == [60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_ramp_back_to_configured_rate(clock: FakeClock, throttle_rules: ThrottleRules) -> None:
    shaper = shaper_for(
        clock, throttle_rules, messages_per_second=10.0, ramp_interval=10.0, ramp_step=0.1
    )
    shaper.on_reply(421, None, "Too many connections")
    assert shaper.current_rate == 5.0
    assert shaper.suspended_until is not None
    clock.now = shaper.suspended_until
    shaper.on_reply(250, "2.0.0", "OK")
    assert shaper.current_rate == 5.0  # no step before a whole interval of success
    rates = []
    for _ in range(7):
        clock.advance(5)
        shaper.on_reply(250, "2.0.0", "OK")  # half-way: no step
        clock.advance(5)
        shaper.on_reply(250, "2.0.0", "OK")
        rates.append(shaper.current_rate)
    # +10% of the configured 10/s per successful interval, never above it.
    assert rates == pytest.approx([6.0, 7.0, 8.0, 9.0, 10.0, 10.0, 10.0])
    assert shaper.throttles == 0  # back at full rate: the next throttle cools down briefly
    shaper.on_reply(421, None, "Too many connections")
    assert shaper.suspended_until == clock.now + 60


def test_throttle_during_ramp_grows_cooldown(
    clock: FakeClock, throttle_rules: ThrottleRules
) -> None:
    shaper = shaper_for(clock, throttle_rules, messages_per_second=8.0, ramp_interval=10.0)
    shaper.on_reply(421, None, "")
    assert shaper.suspended_until is not None
    clock.now = shaper.suspended_until + 10
    shaper.on_reply(250, None, "OK")
    assert shaper.current_rate == pytest.approx(4.8)
    shaper.on_reply(451, "4.7.1", "Please slow down")
    assert shaper.current_rate == pytest.approx(2.4)
    assert shaper.suspended_until == clock.now + 120 and shaper.throttles == 2


def test_throttle_during_manual_suspension_keeps_it(
    clock: FakeClock, throttle_rules: ThrottleRules
) -> None:
    shaper = shaper_for(clock, throttle_rules)
    shaper.suspend(clock.now + 7200)
    shaper.on_reply(421, None, "")
    assert shaper.current_rate == 5.0
    assert shaper.suspended_until == clock.now + 7200 and shaper.manually_suspended


# --- registry ----------------------------------------------------------------------------


def test_registry_creates_shapers_lazily(clock: FakeClock) -> None:
    shaping = Shaping(clock=clock)
    assert shaping.snapshot() == {}
    gmail = shaping.for_destination(GMAIL)
    assert shaping.for_destination(GMAIL) is gmail
    assert gmail.rule.name == "gmail"
    shaping.for_destination(YAHOO).on_reply(421, "4.7.0", "[TSS04] deferred")
    snapshot = shaping.snapshot()
    assert set(snapshot) == {GMAIL, YAHOO}
    assert snapshot[GMAIL].current_rate == snapshot[GMAIL].configured_rate
    assert snapshot[GMAIL].suspended_until is None
    assert snapshot[YAHOO].rule == "yahoo"
    assert snapshot[YAHOO].current_rate == snapshot[YAHOO].configured_rate / 2
    assert snapshot[YAHOO].suspended_until == clock.now + 300


def test_registry_from_operator_files(tmp_path: Path, clock: FakeClock) -> None:
    rules = tmp_path / "shaping.toml"
    rules.write_text("[rules.default]\nmax_connections = 1\n")
    throttle = tmp_path / "throttle.toml"
    throttle.write_text('[[rule]]\nname = "acme"\ntext = ["calm down"]\n')
    shaping = Shaping.from_files(rules, throttle, clock=clock)
    shaper = shaping.for_destination(OTHER)
    assert shaper.rule.max_connections == 1
    assert shaper.on_reply(452, None, "calm down please") == "acme"


# --- retry schedule ----------------------------------------------------------------------


def test_retry_delays_double_up_to_the_cap() -> None:
    delays = [
        next_retry_delay(attempt, minimum=300, maximum=4000, jitter=0) for attempt in range(1, 8)
    ]
    assert delays == [300, 600, 1200, 2400, 4000, 4000, 4000]
    assert next_retry_delay(10_000, minimum=1, maximum=60, jitter=0) == 60


def test_retry_jitter_stays_in_bounds() -> None:
    rng = random.Random(42)
    for attempt in range(1, 12):
        base = min(4000, 300 * 2 ** (attempt - 1))
        for _ in range(200):
            delay = next_retry_delay(attempt, minimum=300, maximum=4000, jitter=0.1, rng=rng)
            assert base * 0.9 <= delay <= base * 1.1
    spread = {next_retry_delay(1, minimum=300, maximum=4000, rng=rng) for _ in range(50)}
    assert len(spread) > 1  # retries do not come back in lock-step


class Extreme:
    def __init__(self, value: float) -> None:
        self.value = value

    def uniform(self, a: float, b: float) -> float:
        return a if self.value < 0 else b


def test_retry_jitter_extremes() -> None:
    assert next_retry_delay(2, minimum=1, maximum=10, jitter=0.25, rng=Extreme(-1)) == 1.5
    assert next_retry_delay(2, minimum=1, maximum=10, jitter=0.25, rng=Extreme(1)) == 2.5


@pytest.mark.parametrize(
    ("attempt", "minimum", "maximum", "jitter"),
    [(0, 1, 10, 0.1), (1, 0, 10, 0.1), (1, 10, 1, 0.1), (1, 1, 10, 1.0), (1, 1, 10, -0.1)],
)
def test_retry_arguments_are_checked(
    attempt: int, minimum: float, maximum: float, jitter: float
) -> None:
    with pytest.raises(ValueError):
        next_retry_delay(attempt, minimum=minimum, maximum=maximum, jitter=jitter)


def test_expiry() -> None:
    five_days = 5 * 86400
    assert not expired(1000.0, 1000.0 + five_days - 1, five_days)
    assert expired(1000.0, 1000.0 + five_days, five_days)
