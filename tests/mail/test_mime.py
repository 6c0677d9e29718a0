"""The message builder's bytes, checked against the stdlib parser and the RFCs' line rules."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.mail.mime import (
    ONE_CLICK,
    Address,
    HeaderInjection,
    OutgoingMessage,
    build_message,
    message_id,
    new_boundary,
    quoted_printable,
)

WHEN = datetime(2026, 11, 26, 9, 30, 15, tzinfo=UTC)
TEXT = "Hello Jane,\n\nYour weekly digest is here.\n.\nTrailing space \nBye.\n"
HTML = '<html><body><p style="color:#333">Hello <b>Jane</b> &amp; friends — ünïcode ☕</p></body></html>'

# Unicode without surrogates (not encodable) and without CR, LF, NUL (header injection).
header_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"),
    max_size=200,
)
body_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=3000)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outgoing(**changes: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "sender": Address("news@example.com", "Example News"),
        "recipient": Address("jane@example.org", "Jane Doe"),
        "subject": "Your weekly digest",
        "message_id": message_id("c42.s7", "mta.example.com"),
        "text": TEXT,
        "html": HTML,
        "date": WHEN,
    }
    fields.update(changes)
    return OutgoingMessage(**fields)


def parse(raw: bytes) -> EmailMessage:
    """Parse with the strict policy (any defect raises) and check no header has defects."""
    strict = email.message_from_bytes(raw, policy=email.policy.strict)
    assert isinstance(strict, EmailMessage)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    for part in parsed.walk():
        assert part.defects == []
        for name, value in part.items():
            assert getattr(value, "defects", ()) == (), (name, value.defects)
    return parsed


def check_lines(raw: bytes) -> None:
    """CRLF only, no bare CR or LF, lines ≤ 998, header lines ≤ 78, ends with CRLF."""
    assert raw.endswith(b"\r\n")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        assert len(line) <= 78, line
        assert line.isascii()
    for line in body.split(b"\r\n"):
        assert len(line) <= 998
        assert line.isascii()
        assert line != b"."


def unfolded(raw: bytes, name: str) -> str:
    """The raw value of header `name`, unfolded, as written on the wire."""
    head = raw.partition(b"\r\n\r\n")[0].decode("ascii").replace("\r\n ", " ")
    found = [line.split(": ", 1)[1] for line in head.split("\r\n") if line.startswith(name + ":")]
    assert len(found) == 1, found
    return found[0]


_PHRASE_TOKEN = re.compile(
    r'(?P<ew>=\?utf-8\?b\?(?P<b64>[A-Za-z0-9+/=]*)\?=)|(?P<ws>[ \t]+)|"(?P<q>(?:\\.|[^"\\])*)"|(?P<atom>[^\s"]+)'
)


def decode_phrase(phrase: str) -> str:
    """An RFC 2047 §6.2 decoder for a display name: whitespace between encoded words is dropped.

    CPython before gh-128110 keeps that whitespace in address headers (its own
    generator's output does not round-trip either), so long names are checked here.
    """
    out: list[str] = []
    pending = b""
    last_ew = False
    space = ""
    first = True
    for match in _PHRASE_TOKEN.finditer(phrase):
        if match["ws"]:
            space = "" if first else " "
            continue
        first = False
        if match["ew"]:
            if not last_ew:
                out.append(space)
            pending += base64.b64decode(match["b64"])
            last_ew = True
        else:
            if pending:
                out.append(pending.decode("utf-8"))
                pending = b""
            out.append(space)
            out.append(
                re.sub(r"\\(.)", r"\1", match["q"]) if match["q"] is not None else match["atom"]
            )
            last_ew = False
        space = ""
    if pending:
        out.append(pending.decode("utf-8"))
    return "".join(out)


def display_name(raw: bytes, parsed: EmailMessage, header: str) -> str:
    """The display name as an RFC 2047 reader sees it; the stdlib must agree when it can."""
    value = unfolded(raw, header)
    phrase = value.rpartition(" <")[0]
    name = decode_phrase(phrase)
    if not re.search(r"\?=\s+=\?", phrase):
        assert parsed[header].addresses[0].display_name == name
    return name


def expected_name(name: str) -> str:
    """A display name as the builder normalises it: controls → spaces, whitespace runs → one."""
    return " ".join(re.sub(r"[\x01-\x1f\x7f]", " ", name).split())


def body_of(parsed: EmailMessage, subtype: str) -> str:
    part = parsed.get_body((subtype,))
    assert part is not None
    assert part.get_content_charset() == "utf-8"
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- structure and every header -------------------------------------------------------------


def test_every_header_round_trips() -> None:
    msg = outgoing(
        reply_to=Address("editors@example.com", "The Editors"),
        unsubscribe_url="https://example.com/u/abc.def",
        unsubscribe_mailto="unsubscribe+c42.s7@bounces.example.com",
        one_click_unsubscribe=True,
        list_id="weekly.news.example.com",
        list_name="Weekly News",
        feedback_id="42:weekly:warta",
        extra_headers={"X-Campaign-ID": "42", "Precedence": "bulk"},
    )
    raw = build_message(msg)
    check_lines(raw)
    parsed = parse(raw)
    assert parsedate_to_datetime(parsed["Date"]) == WHEN
    assert parsed["Message-ID"] == "<c42.s7@mta.example.com>"
    assert parsed["From"].addresses[0].display_name == "Example News"
    assert parsed["From"].addresses[0].addr_spec == "news@example.com"
    assert str(parsed["To"]) == "Jane Doe <jane@example.org>"
    assert str(parsed["Reply-To"]) == "The Editors <editors@example.com>"
    assert parsed["Subject"] == "Your weekly digest"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed["List-Unsubscribe"] == (
        "<https://example.com/u/abc.def>, <mailto:unsubscribe+c42.s7@bounces.example.com>"
    )
    assert parsed["List-Unsubscribe-Post"] == ONE_CLICK
    assert parsed["List-Id"] == "Weekly News <weekly.news.example.com>"
    assert parsed["Feedback-ID"] == "42:weekly:warta"
    assert parsed["X-Campaign-ID"] == "42"
    assert parsed["Precedence"] == "bulk"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert body_of(parsed, "plain") == TEXT
    assert body_of(parsed, "html") == HTML


def test_optional_headers_are_absent_unless_asked() -> None:
    parsed = parse(build_message(outgoing()))
    for name in ("Reply-To", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Id", "Feedback-ID"):
        assert name not in parsed


def test_boundary_is_random_quoted_and_not_in_any_body() -> None:
    raws = [build_message(outgoing(text="=_ --=_ " * 50, html="=_" * 100)) for _ in range(3)]
    boundaries = {email.message_from_bytes(r).get_boundary() for r in raws}
    assert len(boundaries) == 3
    for raw in raws:
        boundary = email.message_from_bytes(raw).get_boundary()
        assert boundary is not None
        assert f'boundary="{boundary}"'.encode() in raw
        assert raw.count(boundary.encode()) == 4  # header, two delimiters, close delimiter
        check_lines(raw)
        assert body_of(parse(raw), "plain") == "=_ --=_ " * 50


def test_new_boundary_cannot_occur_in_quoted_printable() -> None:
    boundary = new_boundary()
    assert boundary.startswith("=_")
    assert b"=_" not in quoted_printable("=_" + boundary + "\n=_x")


def test_date_defaults_to_now_and_keeps_other_zones() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    parsed = parse(build_message(outgoing(date=None)))
    assert before <= parsedate_to_datetime(parsed["Date"]) <= datetime.now(UTC)
    oslo = datetime(2026, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    raw = build_message(outgoing(date=oslo))
    assert b"Date: Mon, 01 Jun 2026 12:00:00 +0200\r\n" in raw


def test_single_part_text_only_and_html_only() -> None:
    raw = build_message(outgoing(html=None))
    check_lines(raw)
    parsed = parse(raw)
    assert parsed.get_content_type() == "text/plain"
    assert body_of(parsed, "plain") == TEXT

    raw = build_message(outgoing(text=None, html="<p>no newline at the end</p>"))
    check_lines(raw)
    parsed = parse(raw)
    assert parsed.get_content_type() == "text/html"
    assert body_of(parsed, "html") == "<p>no newline at the end</p>"


def test_a_message_needs_a_body() -> None:
    with pytest.raises(ValueError, match="text or an HTML body"):
        build_message(outgoing(text=None, html=None))


def test_empty_bodies_are_valid() -> None:
    raw = build_message(outgoing(text="", html=""))
    check_lines(raw)
    parsed = parse(raw)
    assert body_of(parsed, "plain") == ""
    assert body_of(parsed, "html") == ""


# --- subjects -------------------------------------------------------------------------------


def test_short_ascii_subject_is_plain() -> None:
    raw = build_message(outgoing(subject="Hello there, Jane!"))
    assert b"\r\nSubject: Hello there, Jane!\r\n" in raw


def test_long_ascii_subject_is_folded_at_spaces() -> None:
    subject = " ".join(f"word{n}" for n in range(40))
    raw = build_message(outgoing(subject=subject))
    check_lines(raw)
    assert b"=?" not in raw.partition(b"\r\n\r\n")[0]
    assert unfolded(raw, "Subject") == subject
    assert parse(raw)["Subject"] == subject


@pytest.mark.parametrize(
    "subject",
    [
        "Café & crème brûlée — this week",
        "Новости недели",
        "本周新闻 东京、大阪和京都的最新消息",
        "🎉🎉 Party time 🎉 " * 8,
        "👩‍👩‍👧‍👦 family emoji and 🇳🇴 flags",
        "x" * 300,
        "ends with a space ",
        " starts with a space",
        "two  spaces",
        "looks =?utf-8?q?encoded?= but is not",
        "tab\there",
        "",
    ],
)
def test_subject_round_trips(subject: str) -> None:
    raw = build_message(outgoing(subject=subject))
    check_lines(raw)
    assert parse(raw)["Subject"] == subject


def test_non_ascii_subject_uses_encoded_words_within_75_characters() -> None:
    raw = build_message(
        outgoing(subject="Ærlig talt, dette er en veldig lang emnelinje på norsk " * 3)
    )
    words = re.findall(rb"=\?utf-8\?b\?[^?]*\?=", raw.partition(b"\r\n\r\n")[0])
    assert len(words) > 2
    assert all(len(word) <= 75 for word in words)
    for word in words:  # every word holds whole characters
        base64.b64decode(word[10:-2]).decode("utf-8")


@PROPERTY
@given(subject=header_text)
@example(subject="a" + "é" * 100)
@example(subject="\u2028\x85\x0b")
def test_any_subject_round_trips(subject: str) -> None:
    raw = build_message(outgoing(subject=subject))
    check_lines(raw)
    assert parse(raw)["Subject"] == subject


# --- addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Jane Doe",
        "Doe, Jane",
        'Jane "JD" Doe',
        "Dr. Jane Q. Public",
        "back\\slash",
        "Zoë Ødegård-Müller",
        "Zoë Ødegård-Müller from Ärzte ohne Grenzen Großbritannien",
        "李小龍",
        "😀 Smiley 😀",
        "=?utf-8?b?Zm9v?=",
        "  padded  ",
        "a" * 150,
        "Ünïcödé " * 20,
        "李" * 80,
    ],
)
def test_display_names_round_trip(name: str) -> None:
    msg = outgoing(
        sender=Address("news@example.com", name),
        recipient=Address("jane@example.org", name),
        reply_to=Address("r@example.com", name),
    )
    raw = build_message(msg)
    check_lines(raw)
    parsed = parse(raw)
    for header, addr in (
        ("From", "news@example.com"),
        ("To", "jane@example.org"),
        ("Reply-To", "r@example.com"),
    ):
        assert parsed[header].addresses[0].addr_spec == addr
        assert display_name(raw, parsed, header) == expected_name(name)


def test_address_without_name_is_bare() -> None:
    raw = build_message(outgoing(recipient=Address("jane@example.org")))
    assert b"\r\nTo: jane@example.org\r\n" in raw


def test_names_are_normalised_like_a_phrase() -> None:
    raw = build_message(outgoing(recipient=Address("jane@example.org", "  Zoë   Ødegård ")))
    assert display_name(raw, parse(raw), "To") == "Zoë Ødegård"
    raw = build_message(outgoing(recipient=Address("jane@example.org", " \t ")))
    assert b"\r\nTo: jane@example.org\r\n" in raw


def test_control_characters_in_names_become_spaces() -> None:
    raw = build_message(outgoing(recipient=Address("jane@example.org", "Jane\tDoe\x0b\x7fX")))
    parsed = parse(raw)
    assert display_name(raw, parsed, "To") == "Jane Doe X"


@PROPERTY
@given(name=header_text)
@example(name="é" * 43 + " " + "é" * 43)
@example(name="a é b")
@example(name="\x80 \x850")
@example(name="é\u3000\u2028é")
def test_any_display_name_round_trips(name: str) -> None:
    raw = build_message(outgoing(recipient=Address("jane@example.org", name)))
    check_lines(raw)
    parsed = parse(raw)
    assert parsed["To"].addresses[0].addr_spec == "jane@example.org"
    if expected_name(name):
        assert display_name(raw, parsed, "To") == expected_name(name)
    else:  # a name of only spaces is no name
        assert b"\r\nTo: jane@example.org\r\n" in raw


def test_international_domain_is_punycoded() -> None:
    raw = build_message(outgoing(recipient=Address("jane@bücher.example", "Jane")))
    assert b"<jane@xn--bcher-kva.example>" in raw
    assert parse(raw)["To"].addresses[0].domain == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "address",
    [
        "jane",
        "jane@",
        "@example.org",
        "jane doe@example.org",
        "<jane@example.org>",
        "a@b@c",
        "jäne@example.org",
    ],
)
def test_invalid_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError):
        build_message(outgoing(recipient=Address(address)))


# --- list headers, ids, extra headers -------------------------------------------------------


def test_list_unsubscribe_folds_between_uris() -> None:
    url = "https://e.com/u/" + "t" * 40
    raw = build_message(
        outgoing(unsubscribe_url=url, unsubscribe_mailto="mailto:u+1@bounces.example.com")
    )
    check_lines(raw)
    assert f"<{url}>,\r\n <mailto:u+1@bounces.example.com>".encode() in raw
    assert parse(raw)["List-Unsubscribe"] == f"<{url}>, <mailto:u+1@bounces.example.com>"


def test_one_click_needs_a_url() -> None:
    with pytest.raises(ValueError, match="RFC 8058"):
        build_message(outgoing(unsubscribe_mailto="u@example.com", one_click_unsubscribe=True))
    raw = build_message(outgoing(unsubscribe_url="https://example.com/u/1"))
    assert b"List-Unsubscribe-Post" not in raw


def test_list_id_with_non_ascii_name() -> None:
    raw = build_message(
        outgoing(list_id="nyheter.example.no", list_name="Ukentlige nyheter på norsk")
    )
    check_lines(raw)
    parsed = parse(raw)
    assert parsed["List-Id"] == "Ukentlige nyheter på norsk <nyheter.example.no>"
    assert build_message(outgoing(list_id="x.example")).count(b"List-Id: <x.example>\r\n") == 1


@pytest.mark.parametrize("bad", ["has space.example", "<x.example>", "é.example"])
def test_list_id_must_be_a_dot_atom(bad: str) -> None:
    with pytest.raises(ValueError):
        build_message(outgoing(list_id=bad))


@pytest.mark.parametrize("bad", ["c42.s7@host", "<no-at-sign>", "<a b@host>", "<a@b> x"])
def test_message_id_must_be_angle_addr(bad: str) -> None:
    with pytest.raises(ValueError, match="Message-ID"):
        build_message(outgoing(message_id=bad))


def test_extra_header_values_are_encoded_when_needed() -> None:
    raw = build_message(outgoing(extra_headers={"X-Note": "naïve " * 30, "X-Empty": ""}))
    check_lines(raw)
    parsed = parse(raw)
    assert parsed["X-Note"] == "naïve " * 30
    assert parsed["X-Empty"] == ""


@pytest.mark.parametrize("name", ["X Bad", "X-Bad:", "", "X-Ünï", "X\x00"])
def test_extra_header_names_must_be_tokens(name: str) -> None:
    with pytest.raises(ValueError, match="field name"):
        build_message(outgoing(extra_headers={name: "1"}))


@pytest.mark.parametrize("name", ["Subject", "from", "CONTENT-TYPE", "List-Unsubscribe", "Bcc"])
def test_extra_headers_cannot_replace_the_builders(name: str) -> None:
    with pytest.raises(ValueError, match="written by the builder"):
        build_message(outgoing(extra_headers={name: "x"}))


# --- header injection -----------------------------------------------------------------------

INJECTIONS = ["x\r\nBcc: victim@example.com", "x\nBcc: v@example.com", "x\rBcc: v", "x\x00y"]


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize(
    "field",
    [
        "subject",
        "sender_name",
        "recipient_name",
        "recipient_email",
        "reply_to_name",
        "message_id",
        "unsubscribe_url",
        "unsubscribe_mailto",
        "list_id",
        "list_name",
        "feedback_id",
        "extra_value",
    ],
)
def test_header_injection_is_refused(field: str, value: str) -> None:
    cases: dict[str, dict[str, Any]] = {
        "subject": {"subject": value},
        "sender_name": {"sender": Address("a@example.com", value)},
        "recipient_name": {"recipient": Address("a@example.com", value)},
        "recipient_email": {"recipient": Address("a@example.com" + value)},
        "reply_to_name": {"reply_to": Address("a@example.com", value)},
        "message_id": {"message_id": "<a@b>" + value},
        "unsubscribe_url": {"unsubscribe_url": "https://e.com/" + value},
        "unsubscribe_mailto": {"unsubscribe_mailto": "u@e.com" + value},
        "list_id": {"list_id": "l.example" + value},
        "list_name": {"list_id": "l.example", "list_name": value},
        "feedback_id": {"feedback_id": value},
        "extra_value": {"extra_headers": {"X-Note": value}},
    }
    with pytest.raises(HeaderInjection):
        build_message(outgoing(**cases[field]))


def test_header_injection_is_a_value_error() -> None:
    assert issubclass(HeaderInjection, ValueError)


# --- bodies ---------------------------------------------------------------------------------


def test_quoted_printable_keeps_lines_short_and_safe() -> None:
    text = (
        "."
        + "\n"
        + "x" * 500
        + "\n"
        + "line with trailing spaces   \n"
        + "tab\tend\t\n.\n"
        + "é" * 100
    )
    encoded = quoted_printable(text)
    lines = encoded.split(b"\r\n")
    assert all(len(line) <= 76 for line in lines)
    assert b"." not in lines
    assert b"\n" not in encoded.replace(b"\r\n", b"")
    assert binascii.a2b_qp(encoded).decode().replace("\r\n", "\n") == text


def test_quoted_printable_normalises_line_ends() -> None:
    assert quoted_printable("a\r\nb\rc\nd") == b"a\r\nb\r\nc\r\nd"


def test_lone_dot_and_from_lines_survive() -> None:
    text = ".\n..\nFrom the editor\n. \n"
    raw = build_message(outgoing(text=text, html=None))
    check_lines(raw)
    assert body_of(parse(raw), "plain") == text


@PROPERTY
@given(text=body_text, html=body_text)
@example(text="a" * 75 + "\n.", html="=" * 200)
@example(text="x\r\n\r\n.\r\n", html=" \t \n")
def test_any_bodies_round_trip(text: str, html: str) -> None:
    raw = build_message(outgoing(text=text, html=html))
    check_lines(raw)
    parsed = parse(raw)
    assert body_of(parsed, "plain") == lf(text)
    assert body_of(parsed, "html") == lf(html)
    boundary = parsed.get_boundary()
    assert boundary is not None
    for part in parsed.iter_parts():
        assert boundary.encode() not in part.as_bytes().partition(b"\n\n")[2]


@PROPERTY
@given(text=body_text)
def test_memoised_encoding_matches_whole_text_encoding(text: str) -> None:
    whole = binascii.b2a_qp(lf(text).encode(), istext=True).replace(b"\n", b"\r\n")
    assert quoted_printable(text) == whole
    assert quoted_printable(text) == whole  # second time from the memo


@PROPERTY
@given(subject=header_text, name=header_text, text=body_text)
def test_any_message_is_well_formed(subject: str, name: str, text: str) -> None:
    msg = outgoing(
        subject=subject,
        sender=Address("news@example.com", name),
        list_id="l.example",
        list_name=name,
        text=text,
        extra_headers={"X-Subject-Copy": subject},
    )
    raw = build_message(msg)
    check_lines(raw)
    parsed = parse(raw)
    assert parsed["Subject"] == subject
    assert parsed["X-Subject-Copy"] == subject
    assert body_of(parsed, "plain") == lf(text)
