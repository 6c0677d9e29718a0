"""DKIM signing, checked by two independent verifiers: Mail::DKIM (Perl) and dkimpy."""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from dkim.canonicalization import Relaxed
from hypothesis import given
from hypothesis import strategies as st

from app.mail.dkim import (
    DkimKeyError,
    DkimSigner,
    canonicalize_body_relaxed,
    canonicalize_header_relaxed,
    generate_key,
    leading_signers,
    sign_outgoing,
    signing_domain,
)
from tests.helpers.dkim import both_fail, both_pass, mail_dkim

TIMESTAMP = 1_795_000_000


@dataclass(frozen=True)
class KeyRing:
    directory: Path
    records: tuple[str, ...]


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    directory = tmp_path_factory.mktemp("dkim")
    records = (
        generate_key(directory, "rsa.example", "r2026"),
        generate_key(directory, "ed.example", "e2026", "ed25519"),
        generate_key(directory, "dual.example", "a-rsa"),
        generate_key(directory, "dual.example", "b-ed", "ed25519"),
    )
    return KeyRing(directory, records)


@pytest.fixture
def signer(keyring: KeyRing) -> DkimSigner:
    return DkimSigner(keyring.directory, clock=lambda: TIMESTAMP + 0.75)


CAMPAIGN = (
    b"From: Warta News <news@{domain}>\r\n"
    b"To: reader@example.org\r\n"
    b"Subject: November issue\r\n"
    b"Date: Thu, 26 Nov 2026 19:00:00 +0000\r\n"
    b"Message-ID: <c1.r42@{domain}>\r\n"
    b"List-Unsubscribe: <https://news.example/u/abc>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello reader,\r\n"
    b"\r\n"
    b"this is the November issue.\r\n"
)

MESSAGES = {
    "campaign": CAMPAIGN,
    "folded headers": (
        b"From: Warta News\r\n\t<news@{domain}>\r\n"
        b"To: first@example.org,\r\n  second@example.org,\r\n\tthird@example.org\r\n"
        b"Subject: a subject that goes on\r\n and on\r\n\t\tand on\r\n"
        b"Date: Thu, 26 Nov 2026 19:00:00 +0000\r\n"
        b"Message-ID:\r\n <folded@{domain}>\r\n"
        b"List-Unsubscribe: <mailto:u@{domain}>,\r\n <https://news.example/u/abc>\r\n"
        b"\r\n"
        b"Body.\r\n"
    ),
    "trailing whitespace": (
        b"From: news@{domain}   \r\n"
        b"To:   reader@example.org\t\r\n"
        b"Subject:\t spaced \t  out \r\n"
        b"\r\n"
        b"line with trailing spaces   \r\n"
        b"line\twith \t \t inner   whitespace\t\r\n"
        b" \t \r\n"
        b"last line\r\n"
    ),
    "empty lines at end": (
        b"From: news@{domain}\r\nSubject: blank tail\r\n\r\nText.\r\n\r\n\r\n  \r\n\t\r\n\r\n"
    ),
    "8-bit body": (
        b"From: news@{domain}\r\n"
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n" + "Grüße aus Łódź — 日本語のテキスト ✉\r\n".encode() + b"latin-1 \xe9\xe8\r\n"
    ),
    "empty body": b"From: news@{domain}\r\nSubject: nothing\r\n\r\n",
    "repeated headers": (
        b"Received: from a\r\nReceived: from b\r\n"
        b"From: news@{domain}\r\nTo: one@example.org\r\nTo: two@example.org\r\n\r\nx\r\n"
    ),
}


def message(template: bytes, domain: str) -> bytes:
    return template.replace(b"{domain}", domain.encode())


@pytest.mark.parametrize("domain", ["rsa.example", "ed.example"])
@pytest.mark.parametrize("name", list(MESSAGES))
def test_signature_verifies_independently(
    signer: DkimSigner, keyring: KeyRing, domain: str, name: str
) -> None:
    signed = signer.sign(message(MESSAGES[name], domain), domain)
    both_pass(signed, keyring.records)


def test_signature_header_fields(signer: DkimSigner, keyring: KeyRing) -> None:
    original = message(CAMPAIGN, "rsa.example")
    signed = signer.sign(original, "rsa.example")
    header, rest = signed.split(b"\r\n", 1)[0], signed[signed.index(original) :]
    assert header.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert rest == original
    field = signed[: signed.index(original)]
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
    tags = dict(
        tag.split(b"=", 1) for tag in re.sub(rb"\s+", b"", field.split(b":", 1)[1]).split(b";")
    )
    assert tags[b"d"] == b"rsa.example"
    assert tags[b"s"] == b"r2026"
    assert tags[b"t"] == str(TIMESTAMP).encode()
    assert tags[b"h"] == (
        b"from:from:to:to:cc:reply-to:subject:subject:date:date:message-id:message-id:"
        b"mime-version:mime-version:content-type:content-type:list-id:"
        b"list-unsubscribe:list-unsubscribe:list-unsubscribe-post:list-unsubscribe-post"
    )
    verdict = mail_dkim(signed, keyring.records)[0]
    assert (verdict.domain, verdict.selector, verdict.algorithm) == (
        "rsa.example",
        "r2026",
        "rsa-sha256",
    )


def test_ed25519_signature_uses_rfc8463_algorithm(signer: DkimSigner, keyring: KeyRing) -> None:
    signed = signer.sign(message(CAMPAIGN, "ed.example"), "ed.example")
    assert signed.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;")
    [verdict] = mail_dkim(signed, keyring.records)
    assert (verdict.algorithm, verdict.result) == ("ed25519-sha256", "pass")


def test_domain_with_two_keys_is_dual_signed(signer: DkimSigner, keyring: KeyRing) -> None:
    signed = signer.sign(message(CAMPAIGN, "dual.example"), "dual.example")
    assert signed.count(b"DKIM-Signature:") == 2
    both_pass(signed, keyring.records, signatures=2)
    verdicts = mail_dkim(signed, keyring.records)
    assert {(v.selector, v.algorithm) for v in verdicts} == {
        ("a-rsa", "rsa-sha256"),
        ("b-ed", "ed25519-sha256"),
    }


TAMPERINGS = {
    "subject changed": lambda m: m.replace(b"November issue", b"December issue"),
    "body changed": lambda m: m.replace(b"November issue.", b"November issue!"),
    "body line added": lambda m: m + b"P.S. click here\r\n",
    "unsubscribe changed": lambda m: m.replace(b"/u/abc", b"/u/evil"),
    "second From prepended": lambda m: b"From: ceo@rsa.example\r\n" + m,
    "From appended": lambda m: m.replace(b"MIME-Version", b"From: x@evil.example\r\nMIME-Version"),
    "second Subject prepended": lambda m: b"Subject: Act now\r\n" + m,
    "Reply-To added": lambda m: m.replace(
        b"MIME-Version", b"Reply-To: x@evil.example\r\nMIME-Version"
    ),
    "Cc added": lambda m: m.replace(b"MIME-Version", b"Cc: x@evil.example\r\nMIME-Version"),
    "second Content-Type added": lambda m: m.replace(
        b"MIME-Version", b"Content-Type: text/html\r\nMIME-Version"
    ),
}


@pytest.mark.parametrize("domain", ["rsa.example", "ed.example"])
@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_tampering_breaks_signature(
    signer: DkimSigner, keyring: KeyRing, domain: str, name: str
) -> None:
    signed = signer.sign(message(CAMPAIGN, domain), domain)
    tampered = TAMPERINGS[name](signed)
    assert tampered != signed
    both_fail(tampered, keyring.records)


RELAXED_CHANGES = {
    "header refolded": lambda m: m.replace(
        b"Subject: November issue", b"Subject: November\r\n issue"
    ),
    "whitespace widened": lambda m: m.replace(b"Hello reader,", b"Hello \t reader,   "),
    "blank lines appended": lambda m: m + b"\r\n\r\n",
    "header name case": lambda m: m.replace(b"\r\nSubject:", b"\r\nSUBJECT:"),
    "unsigned header added": lambda m: m.replace(b"MIME-Version", b"X-Mailer: a\r\nMIME-Version"),
}


@pytest.mark.parametrize("domain", ["rsa.example", "ed.example"])
@pytest.mark.parametrize("name", list(RELAXED_CHANGES))
def test_relaxed_canonicalisation_tolerates(
    signer: DkimSigner, keyring: KeyRing, domain: str, name: str
) -> None:
    signed = signer.sign(message(CAMPAIGN, domain), domain)
    changed = RELAXED_CHANGES[name](signed)
    assert changed != signed
    both_pass(changed, keyring.records)


def test_domain_without_key_is_left_unsigned(signer: DkimSigner) -> None:
    original = message(CAMPAIGN, "other.example")
    assert signer.sign(original, "other.example") is original
    assert signer.sign(original, "../rsa.example") is original
    assert signer.sign(original, "") is original


def test_domain_lookup_ignores_case_and_root_dot(signer: DkimSigner, keyring: KeyRing) -> None:
    signed = signer.sign(message(CAMPAIGN, "rsa.example"), "RSA.Example.")
    both_pass(signed, keyring.records)


def test_keys_are_cached_and_new_keys_picked_up(tmp_path: Path) -> None:
    signer = DkimSigner(tmp_path)
    original = message(CAMPAIGN, "late.example")
    assert signer.sign(original, "late.example") == original
    record = generate_key(tmp_path, "late.example", "s1", "ed25519")
    keys = signer.keys_for("late.example")
    assert [k.selector for k in keys] == ["s1"]
    assert signer.keys_for("late.example") is keys
    both_pass(signer.sign(original, "late.example"), (record,))


def test_key_directory_is_looked_at_once_per_recheck_interval(tmp_path: Path) -> None:
    now = [100.0]
    signer = DkimSigner(tmp_path, recheck=1.0, monotonic=lambda: now[0])
    assert signer.keys_for("late.example") == ()
    generate_key(tmp_path, "late.example", "s1", "ed25519")
    now[0] += 0.9
    assert signer.keys_for("late.example") == ()  # the cached look, not a new stat
    now[0] += 0.2
    assert [k.selector for k in signer.keys_for("late.example")] == ["s1"]


def test_presigned_recognises_exactly_this_signers_keys(
    signer: DkimSigner, keyring: KeyRing, tmp_path: Path
) -> None:
    original = message(CAMPAIGN, "dual.example")
    signed = signer.sign(original, "dual.example")
    assert signer.presigned(signed, "dual.example")
    assert signer.presigned(signed, "DUAL.example.")
    assert not signer.presigned(original, "dual.example")
    first, second = leading_fields(signed, 2)
    # One of two keys, a key of another directory, a signature not at the top: signed again.
    assert not signer.presigned(first + original, "dual.example")
    assert not signer.presigned(second + original, "dual.example")
    assert not signer.presigned(b"Received: from a\r\n" + signed, "dual.example")
    assert not signer.presigned(signed, "rsa.example")
    generate_key(tmp_path, "dual.example", "a-rsa")
    generate_key(tmp_path, "dual.example", "c-other", "ed25519")
    assert not DkimSigner(tmp_path).presigned(signed, "dual.example")


def test_sign_outgoing_signs_for_the_from_domain(keyring: KeyRing) -> None:
    original = message(MESSAGES["folded headers"], "rsa.example")
    assert signing_domain(original) == "rsa.example"
    signed = sign_outgoing(keyring.directory, original)
    assert signed.endswith(original)
    assert leading_signers(signed, 5) == [("rsa.example", "r2026")]
    both_pass(signed, keyring.records)
    other = message(CAMPAIGN, "other.example")
    assert sign_outgoing(keyring.directory, other) is other


def test_sign_outgoing_leaves_an_unusable_key_to_the_mta(tmp_path: Path) -> None:
    (tmp_path / "bad.example").mkdir()
    (tmp_path / "bad.example" / "s1.pem").write_text("not a key\n")
    original = message(CAMPAIGN, "bad.example")
    assert sign_outgoing(tmp_path, original) is original  # no exception: the batch goes on


def leading_fields(signed: bytes, count: int) -> list[bytes]:
    """The first `count` header fields of `signed`, each with its folded lines and CRLF."""
    fields = re.findall(rb"[^ \t\r][^\r]*\r\n(?:[ \t][^\r]*\r\n)*", signed)
    return fields[:count]


def test_unusable_key_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bad.example").mkdir()
    (tmp_path / "bad.example" / "s1.pem").write_text("not a key\n")
    with pytest.raises(DkimKeyError, match=r"s1\.pem"):
        DkimSigner(tmp_path).sign(message(CAMPAIGN, "bad.example"), "bad.example")


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_generate_key_writes_private_key_and_returns_record(tmp_path: Path, algorithm: str) -> None:
    record = generate_key(tmp_path, "Mail.Example", "sel", algorithm)  # type: ignore[arg-type]
    path = tmp_path / "mail.example" / "sel.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert record.startswith(f'sel._domainkey.mail.example IN TXT "v=DKIM1; k={algorithm}; p=')
    strings = re.findall(r'"([^"]*)"', record)
    assert all(len(s) <= 255 for s in strings)
    assert len(strings) == (2 if algorithm == "rsa" else 1)


def test_generate_key_refuses_to_overwrite(tmp_path: Path) -> None:
    generate_key(tmp_path, "mail.example", "sel", "ed25519")
    with pytest.raises(FileExistsError):
        generate_key(tmp_path, "mail.example", "sel", "ed25519")


@pytest.mark.parametrize(("domain", "selector"), [("../etc", "s"), ("a.example", "../s")])
def test_generate_key_rejects_bad_names(tmp_path: Path, domain: str, selector: str) -> None:
    with pytest.raises(ValueError):
        generate_key(tmp_path, domain, selector)


WSP = st.sampled_from([" ", "\t", "  ", " \t "])
TEXT = st.text(alphabet=st.sampled_from("ab é:;\t"), max_size=12)


@given(st.lists(st.lists(st.one_of(TEXT, WSP), max_size=5).map("".join), max_size=8))
def test_body_canonicalisation_matches_dkimpy(lines: list[str]) -> None:
    body = "".join(line + "\r\n" for line in lines).encode()
    assert canonicalize_body_relaxed(body) == Relaxed.canonicalize_body(body)


@given(
    st.sampled_from(["Subject", "To ", "X-Thing"]),
    st.lists(st.tuples(WSP, TEXT), min_size=1, max_size=4),
)
def test_header_canonicalisation_matches_dkimpy(name: str, parts: list[tuple[str, str]]) -> None:
    value = "\r\n".join(ws + text for ws, text in parts).encode()
    [(cname, cvalue)] = Relaxed.canonicalize_headers([(name.encode(), value)])
    assert canonicalize_header_relaxed(name.encode(), value) + b"\r\n" == cname + b":" + cvalue
