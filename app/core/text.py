"""Checks for user-supplied text that may end up in mail headers or the database."""

from __future__ import annotations

import json
import re
from typing import Any

_LINE_BREAK_OR_NUL = re.compile(r"[\r\n\x00]")
_NUL = "\x00"
_SURROGATE = re.compile("[\ud800-\udfff]")
ATTRIBUTE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_ATTRIBUTES_BYTES = 64_000
MAX_ATTRIBUTES_DEPTH = 8


def storable(text: str) -> str:
    """``text`` as any database, JSON writer or mail header takes it: bytes that were not
    UTF-8 (kept as lone surrogates by a `surrogateescape` decoding, as the SMTP clients do
    with an old server's Latin-1) and NUL (PostgreSQL refuses it in text) become U+FFFD."""
    if text.isascii() and _NUL not in text:
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes the surrogates stand for
    except UnicodeEncodeError:  # a surrogate no decoding made: each becomes U+FFFD
        raw = _SURROGATE.sub("\ufffd", text).encode("utf-8")
    return raw.decode("utf-8", "replace").replace(_NUL, "\ufffd")


def require_single_line(value: str) -> str:
    """Refuse CR, LF and NUL: a value that reaches a header must not be able to add one.

    (`app.mail.rendering.replace_line_breaks` turns them into spaces instead.)
    """
    if _LINE_BREAK_OR_NUL.search(value):
        raise ValueError("must be a single line without control characters (CR, LF or NUL)")
    return value


def no_nul(value: str) -> str:
    """Refuse NUL, which PostgreSQL cannot store in text and which no human types."""
    if _NUL in value:
        raise ValueError("must not contain NUL characters")
    return value


def check_attributes(value: dict[str, Any]) -> dict[str, Any]:
    """Attributes: JSON objects with sane keys, bounded depth and size, no NUL anywhere."""
    for key in value:
        if not ATTRIBUTE_KEY.match(key):
            raise ValueError(
                f"attribute name {key[:70]!r} is invalid: use letters, digits and _ "
                "(starting with a letter or _), at most 64 characters"
            )
    _check_nested(value, depth=1)
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_ATTRIBUTES_BYTES:
        raise ValueError(f"attributes are larger than {MAX_ATTRIBUTES_BYTES} bytes")
    return value


def _check_nested(value: Any, depth: int) -> None:
    if depth > MAX_ATTRIBUTES_DEPTH:
        raise ValueError(f"attributes nest deeper than {MAX_ATTRIBUTES_DEPTH} levels")
    if isinstance(value, str):
        no_nul(value)
    elif isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise ValueError("attributes must not contain NaN or infinity")
    elif isinstance(value, dict):
        for key, item in value.items():
            no_nul(key)
            _check_nested(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_nested(item, depth + 1)
