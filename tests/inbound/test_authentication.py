"""SPF, DKIM and DMARC of inbound mail against a real DNS server on 127.0.0.1 serving the
records a sender would publish."""

from __future__ import annotations

from collections.abc import Iterator

import dkim
import pytest

from app.core.resolver import make_resolver
from app.inbound.authentication import Authenticator, aligned, organisational_domain
from app.inbound.spf import check_spf
from tests.helpers.daemons import ZoneDns, zone_dns
from tests.inbound.conftest import DkimKey

ZONE = """
spf.example. 60 IN TXT "v=spf1 ip4:192.0.2.0/24 include:_spf.partner.example a:web.spf.example mx ~all"
_spf.partner.example. 60 IN TXT "v=spf1 ip6:2001:db8::/32 ip4:198.51.100.7 -all"
web.spf.example. 60 IN A 203.0.113.5
spf.example. 60 IN MX 10 mx.spf.example.
mx.spf.example. 60 IN A 203.0.113.25
redirected.example. 60 IN TXT "v=spf1 redirect=spf.example"
macro.example. 60 IN TXT "v=spf1 exists:%{i}.allow.macro.example -all"
192.0.2.77.allow.macro.example. 60 IN A 127.0.0.2
loop.example. 60 IN TXT "v=spf1 include:loop.example -all"
two.example. 60 IN TXT "v=spf1 -all"
two.example. 60 IN TXT "v=spf1 +all"
many.example. 60 IN TXT "v=spf1 a:a1.many.example a:a2.many.example a:a3.many.example a:a4.many.example a:a5.many.example a:a6.many.example a:a7.many.example a:a8.many.example a:a9.many.example a:a10.many.example a:a11.many.example -all"
neutral.example. 60 IN TXT "v=spf1 ?all"
"""


@pytest.fixture
def spf_dns() -> Iterator[ZoneDns]:
    with zone_dns() as server:
        server.add(ZONE)
        yield server


@pytest.mark.parametrize(
    ("ip", "sender", "expected"),
    [
        ("192.0.2.10", "a@spf.example", "pass"),  # ip4
        ("198.51.100.7", "a@spf.example", "pass"),  # include
        ("2001:db8::1", "a@spf.example", "pass"),  # include, ip6
        ("203.0.113.5", "a@spf.example", "pass"),  # a:
        ("203.0.113.25", "a@spf.example", "pass"),  # mx
        ("198.51.100.8", "a@spf.example", "softfail"),  # ~all
        ("192.0.2.10", "a@redirected.example", "pass"),  # redirect=
        ("198.51.100.8", "a@redirected.example", "softfail"),
        ("192.0.2.77", "a@macro.example", "pass"),  # exists: with %{i}
        ("192.0.2.78", "a@macro.example", "fail"),
        ("192.0.2.10", "a@loop.example", "permerror"),
        ("192.0.2.10", "a@two.example", "permerror"),  # two records
        ("192.0.2.10", "a@many.example", "permerror"),  # more than 10 lookups
        ("192.0.2.10", "a@neutral.example", "neutral"),
        ("192.0.2.10", "a@nothing.example", "none"),
        ("::ffff:192.0.2.10", "a@spf.example", "pass"),  # IPv4-mapped
    ],
)
async def test_spf_results(spf_dns: ZoneDns, ip: str, sender: str, expected: str) -> None:
    resolver = make_resolver([("127.0.0.1", spf_dns.port)], 3.0)
    result, domain = await check_spf(resolver, ip, sender, "helo.example")
    assert result == expected
    assert domain == sender.rpartition("@")[2]


async def test_the_null_sender_is_checked_by_its_helo_name(spf_dns: ZoneDns) -> None:
    resolver = make_resolver([("127.0.0.1", spf_dns.port)], 3.0)
    assert await check_spf(resolver, "192.0.2.10", "", "spf.example") == ("pass", "spf.example")


async def test_an_unanswering_dns_is_a_temporary_error() -> None:
    with zone_dns() as server:
        port = server.port
    resolver = make_resolver([("127.0.0.1", port)], 0.5, cache=False)  # nobody listens now
    assert (await check_spf(resolver, "192.0.2.10", "a@spf.example", "h"))[0] == "temperror"


def _message(sender_domain: str) -> bytes:
    return (
        f"From: Reader <reader@{sender_domain}>\r\nTo: reply@warta.example\r\n"
        "Subject: Re: Hello\r\nDate: Wed, 02 Dec 2026 18:00:00 +0000\r\n"
        f"Message-ID: <1@{sender_domain}>\r\n\r\nThanks!\r\n"
    ).encode()


async def test_dkim_and_dmarc(dns: ZoneDns, dkim_key: DkimKey) -> None:
    checker = Authenticator(make_resolver([("127.0.0.1", dns.port)], 3.0))
    message = _message("reader.example")
    signed = dkim.sign(message, b"sel", b"reader.example", dkim_key.private_pem) + message
    # Signed and SPF-aligned.
    good = await checker.verdicts(
        signed, "127.0.0.1", "h", "reader@reader.example", "Reader <reader@reader.example>"
    )
    assert (good.spf, good.dkim, good.dmarc) == ("pass", "pass", "pass")
    assert good.dkim_domains == ("reader.example",)
    # DKIM alone aligns DMARC even when SPF fails (a forwarder's IP).
    forwarded = await checker.verdicts(
        signed, "192.0.2.99", "h", "reader@reader.example", "reader@reader.example"
    )
    assert (forwarded.spf, forwarded.dkim, forwarded.dmarc) == ("fail", "pass", "pass")
    # A body changed in transit breaks the signature; SPF passes for another domain only.
    tampered = signed.replace(b"Thanks!", b"Send money")
    spoof = await checker.verdicts(
        tampered, "127.0.0.1", "h", "bounce@spf-elsewhere.example", "reader@reader.example"
    )
    assert (spoof.dkim, spoof.dmarc, spoof.dmarc_policy) == ("fail", "fail", "reject")
    header = spoof.header("mx.warta.example")
    assert header == (
        "mx.warta.example; spf=none smtp.mailfrom=spf-elsewhere.example; dkim=fail; "
        "dmarc=fail (p=reject) header.from=reader.example"
    )
    # No signature, no DMARC record: none across the board.
    plain = await checker.verdicts(
        _message("quiet.example"), "127.0.0.1", "h", "a@quiet.example", "a@quiet.example"
    )
    assert (plain.spf, plain.dkim, plain.dmarc) == ("none", "none", "none")


def test_alignment_uses_the_organisational_domain() -> None:
    assert organisational_domain("mail.news.example.com") == "example.com"
    assert organisational_domain("a.example.co.uk") == "example.co.uk"
    assert aligned("bounce.example.com", "example.com", strict=False)
    assert not aligned("bounce.example.com", "example.com", strict=True)
    assert not aligned("example.net", "example.com", strict=False)
