"""Bounce classification rules: defaults, operator rules, broken rule files."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.bounces.classify import BounceClass, BounceRulesError, Classifier, Severity, split_reply

RULES = Classifier.load()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            "550 5.1.1 <a@example.com>: Recipient address rejected: User unknown",
            "invalid_recipient",
        ),
        ("550 No such user here", "invalid_recipient"),
        ("552 5.2.2 Mailbox full", "mailbox_full"),
        ("452 4.2.2 The email account that you tried to reach is over quota", "mailbox_full"),
        ("552 5.3.4 Message size exceeds fixed limit", "message_too_large"),
        ("554 5.7.1 Message rejected as spam by Content Filtering", "content_rejected"),
        (
            "550 5.7.1 Service unavailable, Client host [192.0.2.9] blocked using Spamhaus",
            "reputation_block",
        ),
        ("550 5.1.1 Your IP is listed at bl.example.org (reputation)", "reputation_block"),
        (
            "550 5.7.26 Unauthenticated email from warta.test is not accepted due to DMARC",
            "policy_auth",
        ),
        ("421 4.7.28 Our system has detected an unusual rate of mail", "rate_limited"),
        ("450 4.7.1 Too many messages, slow down", "rate_limited"),
        ("550 5.1.2 Host or domain name not found", "dns_failure"),
        ("domain nowhere.invalid does not exist", "dns_failure"),
        ("451 4.3.0 Temporary local problem", "transient_other"),
        ("expired after 432000 s; last reply: 451 4.3.0 try again", "transient_other"),
        ("554 5.0.0 Service unavailable", "permanent_other"),
    ],
)
def test_default_rules(reply: str, expected: str) -> None:
    assert RULES.classify(reply).bounce_class.value == expected


def test_severities() -> None:
    assert RULES.classify("550 5.1.1 no such user").severity is Severity.hard
    assert RULES.classify("552 5.2.2 mailbox full").severity is Severity.soft
    assert RULES.classify("554 5.7.1 blocked using spamcop").severity is Severity.informational


def test_status_given_by_a_dsn_overrides_the_text() -> None:
    result = RULES.classify("smtp failure", status="5.1.1")
    assert (result.bounce_class, result.status) == (BounceClass.invalid_recipient, "5.1.1")


def test_nothing_matched_falls_back_by_permanence() -> None:
    assert RULES.classify("it went wrong", permanent=True).bounce_class.value == "permanent_other"
    assert RULES.classify("it went wrong").bounce_class.value == "transient_other"


def test_split_reply() -> None:
    assert split_reply("550-5.1.1 The account") == split_reply("550-5.1.1 The account")
    reply = split_reply("550-5.1.1 The account")
    assert (reply.code, reply.status) == ("550", "5.1.1")
    assert (split_reply("no code").code, split_reply("no code").status) == ("", "")


def test_operator_rules_come_first_and_may_rekind_a_class(tmp_path: Path) -> None:
    extra = tmp_path / "rules.toml"
    extra.write_text(
        '[classes]\nmailbox_full = "hard"\n\n'
        '[[rules]]\nclass = "reputation_block"\ntext = "ACME-POLICY-17"\n'
    )
    rules = Classifier.load(extra)
    acme = rules.classify("550 5.1.1 ACME-POLICY-17 no such user")
    assert acme.bounce_class is BounceClass.reputation_block
    assert rules.classify("552 5.2.2 mailbox full").severity is Severity.hard
    assert rules.classify("550 5.1.1 no such user").bounce_class is BounceClass.invalid_recipient


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[[rules]]\nclass = 'nope'\ntext = 'x'\n", "not a known class"),
        ("[[rules]]\nclass = 'mailbox_full'\ntext = '('\n", "text:"),
        ("[[rules]]\nclass = 'mailbox_full'\n", "needs at least one"),
        ("[[rules]]\nclass = 'mailbox_full'\nsubject = 'x'\n", "unknown keys"),
        ("[classes]\nmailbox_full = 'very'\n", "severity"),
        ("not toml [", "rules.toml"),
    ],
)
def test_a_broken_rules_file_is_refused_with_its_name(
    tmp_path: Path, content: str, message: str
) -> None:
    extra = tmp_path / "rules.toml"
    extra.write_text(content)
    with pytest.raises(BounceRulesError, match=r"rules\.toml") as info:
        Classifier.load(extra)
    assert message in str(info.value)
