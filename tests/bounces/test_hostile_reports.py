"""Malformed, oversized and hostile reports are parsed safely with bounded memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from app.bounces.parse.report import ReportKind, parse_report

CORPUS = Path(__file__).with_name("corpus")


def _nested(depth: int) -> bytes:
    head = b"Content-Type: multipart/report; report-type=delivery-status; boundary=b0\r\n\r\n"
    body = b""
    for level in range(depth):
        body += (
            f"--b{level}\r\nContent-Type: multipart/mixed; boundary=b{level + 1}\r\n\r\n".encode()
        )
    return head + body


HOSTILE = {
    "empty": b"",
    "binary": bytes(range(256)) * 400,
    "no boundary": b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\n--x\r\n",
    "garbage status": (
        b"Content-Type: multipart/report; boundary=z\r\n\r\n--z\r\n"
        b"Content-Type: message/delivery-status\r\n\r\n\x00\xff\xfe:::\r\n\r\n;;;\r\n--z--\r\n"
    ),
    "endless header": b"Subject: " + b"A" * 3_000_000,
    "deep nesting": _nested(500),
    "many parts": b"Content-Type: multipart/mixed; boundary=p\r\n\r\n"
    + b"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 20_000,
    "bad charset": (
        b"Content-Type: text/plain; charset=no-such-charset\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!notbase64***\r\n"
    ),
    "many recipients": (
        b"Content-Type: multipart/report; boundary=z\r\n\r\n--z\r\n"
        b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
        + b"Final-Recipient: rfc822; a@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        * 5000
        + b"--z--\r\n"
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_parsed_without_error(name: str) -> None:
    report = parse_report(HOSTILE[name])
    assert isinstance(report.kind, ReportKind)
    assert len(report.recipients) <= 100


def test_a_25_mb_report_is_read_with_bounded_memory() -> None:
    dsn = (CORPUS / "postfix_dsn_user_unknown.eml").read_bytes().replace(b"\n", b"\r\n")
    closing = dsn.rindex(b"--4D1A2C03F7")
    filler = b"X" * 998 + b"\r\n"
    big = dsn[:closing] + filler * (25 * 1024 * 1024 // len(filler)) + dsn[closing:]
    assert len(big) > 25 * 1024 * 1024
    tracemalloc.start()
    try:
        report = parse_report(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.kind is ReportKind.dsn
    assert report.recipients[0].final_recipient == "alice@example.org"
    # Only the first MiB is parsed: the peak stays a small multiple of it, not of 25 MB.
    assert peak < 12 * 1024 * 1024, peak
