"""The bounce and complaint corpus: each sample parsed, attributed and classified."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.bounces.attribution import clues
from app.bounces.classify import BounceClass, Severity, classifier
from app.bounces.parse.report import ReportKind, parse_report

CORPUS = Path(__file__).with_name("corpus")
SECRET = "corpus-secret"  # the samples' VERP tokens and Message-IDs are signed with it

# file, envelope recipient, kind, recipient, action, class, ledger row, clue used
SAMPLES = [
    (
        "postfix_dsn_user_unknown.eml",
        "bounces+c101-bj4y5irdsy@bounces.warta.test",
        ReportKind.dsn,
        "alice@example.org",
        "failed",
        BounceClass.invalid_recipient,
        101,
        "verp",
    ),
    (
        "exchange_dsn_mailbox_full.eml",
        "bounces+c102-3ncthe4rfq@bounces.warta.test",
        ReportKind.dsn,
        "bob@corp.example.net",
        "failed",
        BounceClass.mailbox_full,
        102,
        "verp",
    ),
    (
        "gmail_dsn_no_such_user.eml",
        "bounces+c103-pqxnljdaia@bounces.warta.test",
        ReportKind.dsn,
        "carol.nobody@gmail.example",
        "failed",
        BounceClass.invalid_recipient,
        103,
        "verp",
    ),
    (
        "yahoo_dsn_reputation.eml",
        "bounces+c104-flz6ggk2ki@bounces.warta.test",
        ReportKind.dsn,
        "dave@yahoo.example",
        "failed",
        BounceClass.reputation_block,
        104,
        "verp",
    ),
    (
        "qmail_bounce.eml",
        "bounces+c105-2eqiiquobi@bounces.warta.test",
        ReportKind.bounce,
        "erin@example.com",
        "failed",
        BounceClass.invalid_recipient,
        105,
        "verp",
    ),
    (
        # Sent to the plain bounce address: only the quoted Message-ID names the row.
        "sendmail_old_bounce.eml",
        "bounces@bounces.warta.test",
        ReportKind.bounce,
        "frank@example.edu",
        "failed",
        BounceClass.invalid_recipient,
        106,
        "message-id",
    ),
    (
        "postfix_dsn_delayed.eml",
        "bounces+c109-asxgewavci@bounces.warta.test",
        ReportKind.dsn,
        "ivan@example.org",
        "delayed",
        BounceClass.transient_other,
        109,
        "verp",
    ),
]


@pytest.mark.parametrize(
    ("name", "envelope", "kind", "recipient", "action", "bounce_class", "row", "via"), SAMPLES
)
def test_bounce_samples_are_parsed_attributed_and_classified(
    name: str,
    envelope: str,
    kind: ReportKind,
    recipient: str,
    action: str,
    bounce_class: BounceClass,
    row: int,
    via: str,
) -> None:
    report = parse_report((CORPUS / name).read_bytes())
    assert report.kind is kind
    assert [item.final_recipient for item in report.recipients] == [recipient]
    item = report.recipients[0]
    assert item.action == action
    assert item.diagnostic
    found = clues(SECRET, [envelope], report.original, report.addresses())
    assert found.row is not None and not found.forged
    assert (found.row.kind, found.row.row_id, found.row.via) == ("c", row, via)
    result = classifier().classify(item.diagnostic, item.status, permanent=item.failed)
    assert result.bounce_class is bounce_class


def test_dsn_fields_are_read_per_recipient() -> None:
    report = parse_report((CORPUS / "postfix_dsn_delayed.eml").read_bytes())
    item = report.recipients[0]
    assert item.status == "4.4.1"
    assert item.will_retry_until == "Tue, 1 Dec 2026 10:02:10 +0000 (UTC)"
    assert report.failures == []
    gmail = parse_report((CORPUS / "gmail_dsn_no_such_user.eml").read_bytes()).recipients[0]
    assert gmail.remote_mta.startswith("gmail-smtp-in.l.google.example.")
    assert gmail.diagnostic.startswith("550-5.1.1 The email account")
    postfix = parse_report((CORPUS / "postfix_dsn_user_unknown.eml").read_bytes()).recipients[0]
    assert postfix.original_recipient == "alice@example.org"


def test_a_reputation_block_inside_a_5xx_is_not_hard() -> None:
    report = parse_report((CORPUS / "yahoo_dsn_reputation.eml").read_bytes())
    item = report.recipients[0]
    result = classifier().classify(item.diagnostic, item.status, permanent=True)
    assert result.severity is Severity.informational


def test_arf_abuse_report_is_a_complaint_attributed_by_the_returned_sender() -> None:
    report = parse_report((CORPUS / "arf_abuse.eml").read_bytes())
    assert report.kind is ReportKind.complaint
    assert report.feedback is not None
    assert report.feedback.feedback_type == "abuse"
    assert report.feedback.is_complaint
    assert report.feedback.original_rcpt_to == ["heidi@example.net"]
    assert report.feedback.original_mail_from == "bounces+c108-rljjplyibi@bounces.warta.test"
    assert report.feedback.user_agent == "ExampleFBL/1.0"
    found = clues(SECRET, ["complaints@bounces.warta.test"], report.original, report.addresses())
    assert found.row is not None
    assert (found.row.row_id, found.row.via) == (108, "verp")
    assert found.recipients == ["heidi@example.net"]


@pytest.mark.parametrize(
    ("name", "kind"),
    [("vacation_autoreply.eml", ReportKind.auto_reply), ("human_reply.eml", ReportKind.other)],
)
def test_auto_replies_and_replies_are_not_bounces(name: str, kind: ReportKind) -> None:
    report = parse_report((CORPUS / name).read_bytes())
    assert report.kind is kind
    assert report.recipients == [] and report.feedback is None


def test_a_forged_verp_token_marks_the_report_forged() -> None:
    report = parse_report((CORPUS / "postfix_dsn_user_unknown.eml").read_bytes())
    found = clues(SECRET, ["bounces+c101-aaaaaaaaaa@bounces.warta.test"], report.original, [])
    assert found.forged and found.row is None
    # Signed with another instance's secret: forged as well, and the Message-ID does not
    # verify either.
    other = clues("another-secret", ["bounces+c101-bj4y5irdsy@x"], report.original, [])
    assert other.forged and other.row is None


def test_arf_attribution_by_original_mail_from_then_by_message_id() -> None:
    data = (CORPUS / "arf_abuse.eml").read_bytes()
    data = data.replace(b"Message-ID: <c108.gthxwxbo3m@mta.warta.test>\n", b"")
    data = data.replace(b"Return-Path: <bounces+c108-rljjplyibi@bounces.warta.test>\n", b"")
    report = parse_report(data)
    assert report.feedback is not None and report.original is not None
    assert report.original.get("Message-ID") is None
    senders = [report.feedback.original_mail_from]
    found = clues(SECRET, ["complaints@x"], report.original, report.addresses(), senders)
    assert found.row is not None and (found.row.row_id, found.row.via) == (108, "verp")
    forged = [senders[0].replace("rljjplyibi", "aaaaaaaaaa")]
    assert clues(SECRET, ["complaints@x"], report.original, [], forged).forged
    # Without any envelope sender, the Message-ID still names the row.
    kept_id = (CORPUS / "arf_abuse.eml").read_bytes()
    kept_id = kept_id.replace(b"Return-Path: <bounces+c108-rljjplyibi@bounces.warta.test>\n", b"")
    by_id = clues(SECRET, ["complaints@x"], parse_report(kept_id).original, [])
    assert by_id.row is not None and (by_id.row.row_id, by_id.row.via) == (108, "message-id")


def test_only_signed_clues_name_a_row() -> None:
    """Feedback-ID, To and the reported address are the report's word: they name no row."""
    data = (CORPUS / "arf_abuse.eml").read_bytes()
    data = data.replace(b"Message-ID: <c108.gthxwxbo3m@mta.warta.test>\n", b"")
    data = data.replace(b"Return-Path: <bounces+c108-rljjplyibi@bounces.warta.test>\n", b"")
    report = parse_report(data)
    assert report.original is not None and report.original.get("Feedback-ID")
    found = clues(SECRET, ["complaints@bounces.warta.test"], report.original, report.addresses())
    assert found.row is None and not found.forged
    assert found.recipients == ["heidi@example.net"]
