"""DKIM signing throughput on one core: RSA-2048 and Ed25519 on a ~9 KB newsletter.

Each message has its own Message-ID and To, so nothing is signed twice. The figure is
the whole `DkimSigner.sign` call (parse, relaxed canonicalisation, body hash, header
hash, signature, folding). Signing must not be the MTA's bottleneck: the end-to-end
target is 1,000 messages/s, so signing alone should manage several times that. dkimpy
(pure-Python RSA) is measured beside it for reference when it is installed, and so is
a bare `cryptography` RSA signature, the ceiling for RSA on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from app.mail.dkim import DkimSigner, generate_key
from bench.results import Row

TARGET = 2_000
DEFAULT_MESSAGES = 4_000
DOMAIN = "news.example"
MESSAGE_BYTES = 9 * 1024

HEADER = (
    "From: Warta News <news@news.example>\r\n"
    "To: reader{n}@example.org\r\n"
    "Subject: Your weekly digest #42\r\n"
    "Date: Thu, 26 Nov 2026 19:00:00 +0000\r\n"
    "Message-ID: <c42.r{n}@news.example>\r\n"
    "List-Unsubscribe: <https://news.example/u/{n}>, <mailto:unsub-{n}@news.example>\r\n"
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
)
PARAGRAPH = (
    "<p>After months of debate the council approved the plan on Tuesday.  Residents "
    "along the route — in Zürich and Łódź alike — welcome the quieter streets.</p>  \r\n"
)


def newsletter(n: int) -> bytes:
    """A ~9 KB message for recipient `n`, with CRLF line endings."""
    head = HEADER.format(n=n).encode()
    paragraph = PARAGRAPH.encode()
    body = paragraph * ((MESSAGE_BYTES - len(head)) // len(paragraph) + 1)
    return head + body[: MESSAGE_BYTES - len(head) - 2] + b"\r\n"


def rate(signer: DkimSigner, messages: list[bytes]) -> float:
    """Messages signed per second."""
    started = time.perf_counter()
    for message in messages:
        signer.sign(message, DOMAIN)
    return len(messages) / (time.perf_counter() - started)


def raw_rsa_rate(count: int) -> float:
    """Bare RSA-2048 PKCS#1 v1.5 signatures/s from `cryptography`: the ceiling for RSA."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = b"x" * 700  # about the size of the canonicalised signed header block
    started = time.perf_counter()
    for _ in range(count):
        key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return count / (time.perf_counter() - started)


def dkimpy_rate(key_file: Path, messages: list[bytes]) -> float | None:
    """dkimpy's RSA signing rate on the same messages, or None if it is not installed."""
    try:
        import dkim
    except ImportError:
        return None
    key = key_file.read_bytes()
    headers = [b"from", b"to", b"subject", b"date", b"message-id"]
    started = time.perf_counter()
    for message in messages:
        dkim.sign(message, b"rsa", DOMAIN.encode(), key, include_headers=headers)
    return len(messages) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> list[Row]:
    """Print signatures/s for RSA-2048 and Ed25519, and dkimpy's RSA for reference."""
    parser = argparse.ArgumentParser(description="DKIM signing throughput.")
    parser.add_argument("--messages", type=int, help=f"default {DEFAULT_MESSAGES:,}")
    parser.add_argument("--quick", action="store_true", help="1,000 messages")
    args = parser.parse_args(argv if argv is not None else [])
    count = args.messages or (1000 if args.quick else DEFAULT_MESSAGES)
    messages = [newsletter(n) for n in range(count)]
    print(f"message {len(messages[0]):,} B; {count:,} messages, one core")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm, label in (("rsa", "RSA-2048"), ("ed25519", "Ed25519")):
            directory = Path(tmp) / algorithm
            generate_key(directory, DOMAIN, "bench", algorithm)  # type: ignore[arg-type]
            signer = DkimSigner(directory)
            rate(signer, messages[:50])  # warm up: key load, regex caches
            figures[label] = figure = rate(signer, messages)
            verdict = "ok" if figure >= TARGET else f"BELOW target {TARGET:,}"
            print(f"{label:<10} {figure:>9,.0f} signatures/s  ({verdict})")
        ceiling = raw_rsa_rate(min(count, 2_000))
        print(f"{'bare RSA':<10} {ceiling:>9,.0f} signatures/s  (cryptography alone, no DKIM)")
        reference = dkimpy_rate(Path(tmp) / "rsa" / DOMAIN / "bench.pem", messages[:200])
        if reference is not None:
            print(f"{'dkimpy RSA':<10} {reference:>9,.0f} signatures/s  (reference)")
    return [
        Row(
            "DKIM signing, 9 KB message, one core",
            f"≥ {TARGET:,}/s (not the bottleneck)",
            f"RSA-2048 {figures['RSA-2048']:,.0f}/s, Ed25519 {figures['Ed25519']:,.0f}/s",
            f"bare RSA {ceiling:,.0f}/s"
            + (f"; dkimpy {reference:,.0f}/s" if reference is not None else ""),
            figures["RSA-2048"] >= TARGET,
        )
    ]


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
