"""`storable`: text from outside (a remote server's reply, a report's header) made storable."""

from __future__ import annotations

import json

import pytest

from app.core.text import storable


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("550 5.1.1 no such user", "550 5.1.1 no such user"),  # ASCII: as it is
        ("Benutzer M\u00fcller unbekannt", "Benutzer M\u00fcller unbekannt"),  # valid UTF-8
        # a Latin-1 byte, as the SMTP clients decode it (surrogateescape)
        (b"M\xfcller".decode("utf-8", "surrogateescape"), "M\ufffdller"),
        # an invalid UTF-8 sequence of two bytes: each byte replaced
        (b"a\xc3(b".decode("utf-8", "surrogateescape"), "a\ufffd(b"),
        ("550 a\x00b", "550 a\ufffdb"),  # NUL, which PostgreSQL refuses in text
        ("x\ud800y", "x\ufffdy"),  # a surrogate no decoding made
    ],
)
def test_what_is_stored(text: str, stored: str) -> None:
    assert storable(text) == stored
    json.dumps(storable(text), ensure_ascii=False).encode("utf-8")  # raised before
