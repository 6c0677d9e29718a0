"""A fast RFC 5322 / MIME message builder: headers and quoted-printable bodies as bytes.

`email.message.EmailMessage` with the default policy manages ~600 messages a second;
a newsletter send needs thousands, so this module writes the bytes itself. The
output is checked against the stdlib parser in the tests. It knows nothing of SMTP:
the envelope and dot-stuffing are the sender's business.
"""

from __future__ import annotations

import binascii
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from types import MappingProxyType

MAX_HEADER_LINE = 78
ONE_CLICK = "List-Unsubscribe=One-Click"

# Headers the builder writes itself; extra_headers may not repeat them.
RESERVED_HEADERS = frozenset(
    {
        "date", "message-id", "from", "to", "cc", "bcc", "reply-to", "sender", "subject",
        "mime-version", "content-type", "content-transfer-encoding", "list-unsubscribe",
        "list-unsubscribe-post", "list-id", "feedback-id", "return-path",
    }
)  # fmt: skip

_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_PRINTABLE = re.compile(r"[ -~]*")
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_UNSAFE = re.compile(r"[\r\n\x00]")
_ADDR_SPEC = re.compile(r"[^\s<>()\[\],;:\"\\@]+@[^\s<>()\[\],;:\"\\@]+")
_MSG_ID = re.compile(r"<[^\s<>()\[\],;:\"\\@]+@[^\s<>()\[\],;:\"\\@]+>")
_URI = re.compile(r"[!-~]+")
_EW_OVERHEAD = len("=?utf-8?b??=")
_PHRASE_WORD_BYTES = 42  # fits "Reply-To: " + one encoded word in 78 columns
_MAX_QUOTED = 64
_PHRASE_CONTROLS = dict.fromkeys([*range(0x01, 0x20), 0x7F], " ")
_QP_LINES: dict[str, bytes] = {}  # memo of encoded lines, cleared when full
_QP_CACHE_SIZE = 20_000
_QP_CACHE_MAX_LINE = 4_000
_MAX_ATOM = 64


class HeaderInjection(ValueError):
    """A header value contains CR, LF or NUL, which could start a new header or body."""


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: an address and an optional display name (any text but CR, LF and NUL).

    The display name is written as a reader shows it: control characters as spaces,
    runs of whitespace as one space, none at the ends.
    """

    email: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """Everything that goes into one message's bytes; at least one of html and text."""

    sender: Address
    recipient: Address
    subject: str
    message_id: str
    text: str | None = None
    html: str | None = None
    reply_to: Address | None = None
    date: datetime | None = None
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    one_click_unsubscribe: bool = False
    list_id: str | None = None
    list_name: str = ""
    feedback_id: str | None = None
    extra_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def build_message(msg: OutgoingMessage) -> bytes:
    """The complete message as CRLF-terminated bytes, ready for SMTP DATA (before dot-stuffing)."""
    if msg.text is None and msg.html is None:
        raise ValueError("a message needs a text or an HTML body")
    lines = [
        _date_header(msg.date),
        "Message-ID: " + _message_id(msg.message_id),
        _mailbox_header("From", msg.sender),
        _mailbox_header("To", msg.recipient),
    ]
    if msg.reply_to is not None:
        lines.append(_mailbox_header("Reply-To", msg.reply_to))
    lines.append(_unstructured_header("Subject", msg.subject))
    lines.extend(_list_headers(msg))
    if msg.feedback_id is not None:
        lines.append("Feedback-ID: " + _ascii_value("Feedback-ID", msg.feedback_id))
    for name, value in msg.extra_headers.items():
        lines.append(_extra_header(name, value))
    lines.append("MIME-Version: 1.0")

    if msg.text is not None and msg.html is not None:
        boundary = new_boundary()
        lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        delimiter = b"\r\n--" + boundary.encode("ascii")
        chunks = [
            _head(lines),
            b"This is a multi-part message in MIME format.",
            delimiter,
            b"\r\nContent-Type: text/plain; charset=utf-8"
            b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
            quoted_printable(msg.text),
            delimiter,
            b"\r\nContent-Type: text/html; charset=utf-8"
            b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
            quoted_printable(msg.html),
            delimiter,
            b"--\r\n",
        ]
        return b"".join(chunks)

    kind, body = ("plain", msg.text) if msg.text is not None else ("html", msg.html or "")
    lines.append(f"Content-Type: text/{kind}; charset=utf-8")
    lines.append("Content-Transfer-Encoding: quoted-printable")
    encoded = quoted_printable(body)
    # End on CRLF for SMTP; a soft line break adds it without changing the text.
    return b"".join((_head(lines), encoded, b"" if encoded.endswith(b"\r\n") else b"=\r\n"))


def _date_header(date: datetime | None) -> str:
    if date is not None:
        return "Date: " + format_datetime(date)
    return _date_of_second(int(time.time()))


@lru_cache(maxsize=2)  # one formatting per second, not per message
def _date_of_second(second: int) -> str:
    return "Date: " + format_datetime(datetime.fromtimestamp(second, UTC))


def new_boundary() -> str:
    """A random MIME boundary; `=_` never occurs in quoted-printable text, so no body can hold it."""
    return "=_" + secrets.token_hex(12)


def message_id(unique: str, host: str) -> str:
    """`<unique@host>`: the caller derives `unique` deterministically from its send ledger row."""
    return _message_id(f"<{unique}@{host}>")


def quoted_printable(text: str) -> bytes:
    """UTF-8 quoted-printable with CRLF line ends, lines ≤ 76, and a lone `.` encoded as `=2E`.

    binascii encodes each line independently of the others, so lines are encoded
    one by one and memoised: a campaign's template lines repeat in every message,
    only the personalised ones need encoding again.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    cache = _QP_LINES
    encoded = []
    for line in text.split("\n"):
        chunk = cache.get(line)
        if chunk is None:
            chunk = _qp_line(line)
            if len(line) <= _QP_CACHE_MAX_LINE:
                if len(cache) >= _QP_CACHE_SIZE:
                    cache.clear()
                cache[line] = chunk
        encoded.append(chunk)
    return b"\r\n".join(encoded)


def _qp_line(line: str) -> bytes:
    # binascii ends soft-broken lines with "=\n" (no CR in its input, it writes LF),
    # and escapes every control character, so this replace yields the only CR and LF.
    return binascii.b2a_qp(line.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


def _head(lines: list[str]) -> bytes:
    lines.append("\r\n")
    return "\r\n".join(lines).encode("ascii")


def _check(name: str, value: str) -> str:
    if _UNSAFE.search(value):
        raise HeaderInjection(f"{name}: CR, LF and NUL are not allowed in a header value")
    return value


def _ascii_value(name: str, value: str) -> str:
    _check(name, value)
    if not _PRINTABLE.fullmatch(value):
        raise ValueError(f"{name}: only printable ASCII is allowed")
    return value


def _message_id(value: str) -> str:
    _check("Message-ID", value)
    if not _MSG_ID.fullmatch(value):
        raise ValueError(f"Message-ID: {value!r} is not of the form <unique@host>")
    return value


def _addr_spec(name: str, email: str) -> str:
    _check(name, email)
    local, at, domain = email.rpartition("@")
    if at and not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{name}: {email!r} has an invalid domain") from None
        email = f"{local}@{domain}"
    if not email.isascii():
        raise ValueError(f"{name}: {email!r} needs SMTPUTF8, which is not supported")
    if not _ADDR_SPEC.fullmatch(email):
        raise ValueError(f"{name}: {email!r} is not a valid address")
    return email


@lru_cache(maxsize=256)  # From, Reply-To: the same for every message of a campaign
def _mailbox_header(name: str, address: Address) -> str:
    email = _addr_spec(name, address.email)
    tokens = _phrase(name, address.name)
    if not tokens:
        return f"{name}: {email}"
    return _fold(name, [*tokens, f"<{email}>"])


def _phrase(name: str, phrase: str) -> list[str]:
    """Tokens of an RFC 5322 phrase (display name); none for an empty name.

    The name is normalised as readers display a phrase anyway: control characters
    other than CR, LF and NUL (refused) become spaces, runs of whitespace collapse
    to one space and the ends are trimmed. What remains round-trips exactly.
    """
    phrase = " ".join(_check(name, phrase).translate(_PHRASE_CONTROLS).split())
    if not phrase:
        return []
    words = phrase.split(" ")
    if all(map(_plain_atom, words)):
        return words
    if _PRINTABLE.fullmatch(phrase) and "=?" not in phrase:
        quoted = '"' + phrase.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(quoted) <= _MAX_QUOTED:
            return [quoted]
    # Plain atoms stay readable; runs of other words become encoded words. Whitespace
    # next to an atom is significant to every parser, unlike whitespace between two
    # encoded words, which RFC 2047 parsers drop (so those spaces are encoded instead).
    tokens: list[str] = []
    run: list[str] = []
    for word in words:
        if _plain_atom(word):
            if run:
                tokens += _encoded_words(" ".join(run), _PHRASE_WORD_BYTES, _PHRASE_WORD_BYTES)
                run = []
            tokens.append(word)
        else:
            run.append(word)
    if run:
        tokens += _encoded_words(" ".join(run), _PHRASE_WORD_BYTES, _PHRASE_WORD_BYTES)
    return tokens


def _plain_atom(word: str) -> bool:
    return len(word) <= _MAX_ATOM and _ATOM.fullmatch(word) is not None and "=?" not in word


def _unstructured_header(name: str, value: str) -> str:
    """`name: value` folded at 78 columns, with encoded words where plain text would not round-trip."""
    _check(name, value)
    words = value.split(" ")
    room = MAX_HEADER_LINE - 1
    if (
        _PRINTABLE.fullmatch(value)
        and "=?" not in value
        and "" not in words
        and all(len(w) < room for w in words)
        and len(name) + 2 + len(words[0]) <= MAX_HEADER_LINE
    ):
        return _fold(name, words)
    if not value:
        return f"{name}: "
    first = (MAX_HEADER_LINE - len(name) - 2 - _EW_OVERHEAD) // 4 * 3
    return _fold(name, _encoded_words(value, max(first, 3), 45))


def _encoded_words(value: str, first_bytes: int, bytes_per_word: int) -> list[str]:
    """RFC 2047 `b` encoded words, each ≤ 75 characters and whole UTF-8 characters."""
    data = value.encode("utf-8")
    size = len(data)
    if size <= first_bytes:
        return [_b_word(data)]
    words = []
    start, limit = 0, first_bytes
    while start < size:
        end = start + limit
        if end >= size:
            end = size
        else:
            while data[end] & 0xC0 == 0x80:  # never split a character's bytes
                end -= 1
        words.append(_b_word(data[start:end]))
        start, limit = end, bytes_per_word
    return words


def _b_word(data: bytes) -> str:
    return "=?utf-8?b?" + binascii.b2a_base64(data, newline=False).decode("ascii") + "?="


def _fold(name: str, tokens: list[str]) -> str:
    """`name: tokens…` joined by spaces, breaking lines before a token that would pass 78."""
    out = [name, ": ", tokens[0]]
    column = len(name) + 2 + len(tokens[0])
    for token in tokens[1:]:
        if column + 1 + len(token) <= MAX_HEADER_LINE:
            out += (" ", token)
            column += 1 + len(token)
        else:
            out += ("\r\n ", token)
            column = 1 + len(token)
    return "".join(out)


def _list_headers(msg: OutgoingMessage) -> list[str]:
    lines = []
    uris = []
    if msg.unsubscribe_url is not None:
        uris.append(_uri("List-Unsubscribe", msg.unsubscribe_url))
    if msg.unsubscribe_mailto is not None:
        mailto = msg.unsubscribe_mailto
        if not mailto.lower().startswith("mailto:"):
            mailto = "mailto:" + mailto
        uris.append(_uri("List-Unsubscribe", mailto))
    if uris:
        tokens = [f"<{uri}>," for uri in uris]
        tokens[-1] = tokens[-1][:-1]
        lines.append(_fold("List-Unsubscribe", tokens))
    if msg.one_click_unsubscribe:
        if msg.unsubscribe_url is None:
            raise ValueError("List-Unsubscribe-Post needs an unsubscribe_url (RFC 8058)")
        lines.append("List-Unsubscribe-Post: " + ONE_CLICK)
    if msg.list_id is not None:
        lines.append(_list_id_header(msg.list_id, msg.list_name))
    return lines


@lru_cache(maxsize=64)
def _list_id_header(list_id: str, list_name: str) -> str:
    _ascii_value("List-Id", list_id)
    if not _URI.fullmatch(list_id) or "<" in list_id or ">" in list_id:
        raise ValueError(f"List-Id: {list_id!r} is not a dot-atom such as news.example.com")
    return _fold("List-Id", [*_phrase("List-Id", list_name), f"<{list_id}>"])


def _uri(name: str, uri: str) -> str:
    _check(name, uri)
    if not _URI.fullmatch(uri) or "<" in uri or ">" in uri:
        raise ValueError(f"{name}: {uri!r} is not a URI without spaces or angle brackets")
    return uri


def _extra_header(name: str, value: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"header name {name!r} is not an RFC 5322 field name")
    if name.lower() in RESERVED_HEADERS:
        raise ValueError(f"header {name!r} is written by the builder; use the message field")
    return _unstructured_header(name, value)
