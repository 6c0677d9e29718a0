"""Message-IDs and VERP addresses: one Kind per row type, the same bytes as ever."""

from __future__ import annotations

import pytest

from app.mail import identity
from app.mail.identity import Kind

SECRET = "s3cret"

# Made by the code before Kind existed (the kind was a bare letter): a resubmission after an
# upgrade must carry the Message-ID the MTA already knows, and old bounces must still verify.
EARLIER = {
    Kind.CAMPAIGN: ("<c42.jwinsfzpbu@mta.example>", "bounces+c42-gr2bzcwbyq@bounces.example"),
    Kind.MESSAGE: ("<m42.nxg72qhse4@mta.example>", "bounces+m42-tmlxsblpwa@bounces.example"),
    Kind.TEST: ("<t42.wf5kivik5m@mta.example>", "bounces+t42-2gy2gr2tqq@bounces.example"),
    Kind.OPTIN: ("<o42.rn3o4zjm2i@mta.example>", "bounces+o42-jkpnqpd6d4@bounces.example"),
}


@pytest.mark.parametrize("kind", list(Kind))
def test_each_kind_makes_the_same_names_as_before(kind: Kind) -> None:
    message_id, verp = EARLIER[kind]
    assert identity.message_id(SECRET, 42, "mta.example", kind) == message_id
    assert identity.verp_address(SECRET, 42, "bounces.example", kind) == verp
    assert identity.parse_message_id(SECRET, message_id) == (kind, 42)
    assert identity.parse_verp(SECRET, verp) == (kind, 42)
    parsed = identity.parse_verp(SECRET, verp)
    assert parsed is not None and parsed[0] is kind


def test_the_kinds_are_single_letters() -> None:
    assert [str(kind) for kind in Kind] == ["c", "m", "t", "o"]


def test_forged_or_foreign_names_are_refused() -> None:
    message_id, verp = EARLIER[Kind.MESSAGE]
    assert identity.parse_message_id("other-secret", message_id) is None
    assert identity.parse_verp("other-secret", verp) is None
    # Another kind's letter on this row's signature does not verify.
    assert identity.parse_verp(SECRET, verp.replace("+m42", "+c42")) is None
    assert identity.parse_message_id(SECRET, "<x@y>") is None
    assert identity.parse_verp(SECRET, "someone@example.com") is None


HOSTILE = ["²", "é", "\udcff", "\ufffd", "١٢", "1" * 5000]
"""Unicode digits (`isdigit` is true, `int` may refuse), non-ASCII letters, a lone surrogate
(what a bytes header decodes to with surrogateescape), and a number past int's digit limit."""


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_tokens_are_refused_without_an_error(value: str) -> None:
    genuine = identity.link_token(SECRET, "unsubscribe", 1, 2)
    body, _, mac = genuine.rpartition(".")
    message_id, verp = EARLIER[Kind.CAMPAIGN]
    for token in (f"{body}.{value}", f"{value}.{mac}", value, f"{body}.{mac[:-1]}{value}"):
        assert identity.read_link_token(SECRET, "unsubscribe", token) is None
        assert identity.read_tracking_token(SECRET, "click", token) is None
    for address in (
        f"bounces+c1-{value}@bounces.example",
        f"bounces+c{value}-gr2bzcwbyq@bounces.example",
        f"bounces+{value}@bounces.example",
        verp.replace("gr2bzcwbyq", value),
    ):
        assert identity.parse_verp(SECRET, address) is None
    for header in (f"<c{value}.jwinsfzpbu@mta.example>", f"<c42.{value}@mta.example>"):
        assert identity.parse_message_id(SECRET, header) is None
    assert identity.parse_message_id(SECRET, message_id) == (Kind.CAMPAIGN, 42)
