"""Sender domain checks against a real DNS server on loopback: one good domain, one broken.

The broken domain's advice is then published into its zone, and the checks run again:
what Warta says to publish is what makes them pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from app.core.settings import Settings
from app.mail.dkim import generate_key, txt_record
from app.safety.domains import DomainChecker, DomainReport, local_dkim_keys
from tests.helpers.api import create_campaign, post_json
from tests.helpers.daemons import zone_dns
from tests.safety.conftest import MakeApi


def _zone(*records: str) -> str:
    return "\n".join(records) + "\n"


@pytest.fixture
def dkim_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "dkim"
    for domain in ("good.example", "broken.example"):
        generate_key(directory, domain, "s1", "rsa")
    generate_key(directory, "good.example", "ed1", "ed25519")
    return directory


def _published_dkim(dkim_dir: Path, domain: str) -> list[str]:
    """The records `warta dkim-keygen` printed for the domain's keys (made absolute)."""
    records = []
    for path in sorted((dkim_dir / domain).glob("*.pem")):
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey)
        record = txt_record(domain, path.stem, key)
        records.append(record.replace(f"._domainkey.{domain} IN", f"._domainkey.{domain}. IN"))
    return records


def _good_zone(dkim_dir: Path) -> str:
    return _zone(
        "bounces.good.example. 300 IN MX 10 mta.good.example.",
        'bounces.good.example. 300 IN TXT "v=spf1 ip4:192.0.2.10 include:_spf.good.example -all"',
        '_spf.good.example. 300 IN TXT "v=spf1 ip6:2001:db8::10 ~all"',
        '_dmarc.good.example. 300 IN TXT "v=DMARC1; p=quarantine; aspf=r; adkim=s"',
        "mta.good.example. 300 IN A 192.0.2.10",
        "mta.good.example. 300 IN AAAA 2001:db8::10",
        "10.2.0.192.in-addr.arpa. 300 IN PTR mta.good.example.",
        "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 300 IN PTR "
        "mta.good.example.",
        *_published_dkim(dkim_dir, "good.example"),
    )


BROKEN_ZONE = _zone(
    'bounces.elsewhere.example. 300 IN TXT "v=spf1 ip4:198.51.100.1 -all"',
    "bounces.elsewhere.example. 300 IN MX 10 mail.other.example.",
    "mail.other.example. 300 IN A 198.51.100.7",
    # A key, but not Warta's: the selector was re-keyed locally and DNS never updated.
    's1._domainkey.broken.example. 300 IN TXT "v=DKIM1; k=rsa; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8QuKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ=="',
    "mta.broken.example. 300 IN A 192.0.2.20",
    "20.2.0.192.in-addr.arpa. 300 IN PTR host-20.isp.example.",
)  # fmt: skip


def _settings(settings: Settings, dns: str, dkim_dir: Path, *, good: bool) -> Settings:
    return settings.model_copy(
        update={
            "mta_dns_servers": dns,
            "dkim_dir": dkim_dir,
            "mta_hostname": "mta.good.example" if good else "mta.broken.example",
            "bounce_domain": "bounces.good.example" if good else "bounces.elsewhere.example",
        }
    )


def _by_name(report: DomainReport) -> dict[str, tuple[str, list[str]]]:
    return {check.name: (check.status, check.publish) for check in report.checks}


async def test_a_correct_domain_passes_every_check(settings: Settings, dkim_dir: Path) -> None:
    with zone_dns(_good_zone(dkim_dir)) as zone:
        dns = zone.servers
        report = await DomainChecker(_settings(settings, dns, dkim_dir, good=True)).check(
            "good.example"
        )
    assert report.ok, report
    assert {c.name: c.status for c in report.checks} == dict.fromkeys(
        ("spf", "dkim", "dmarc", "alignment", "mx", "ptr"), "pass"
    )
    assert report.sending_ips == ["192.0.2.10", "2001:db8::10"]


async def test_a_broken_domain_fails_each_check_with_the_record_to_publish(
    settings: Settings, dkim_dir: Path
) -> None:
    config = _settings(settings, "", dkim_dir, good=False)
    with zone_dns(BROKEN_ZONE) as zone:
        dns = zone.servers
        report = await DomainChecker(config.model_copy(update={"mta_dns_servers": dns})).check(
            "broken.example"
        )
    checks = _by_name(report)
    assert not report.ok
    assert {name: status for name, (status, _) in checks.items()} == dict.fromkeys(
        ("spf", "dkim", "dmarc", "alignment", "mx", "ptr"), "fail"
    )
    assert checks["spf"][1] == [
        'bounces.elsewhere.example. IN TXT "v=spf1 ip4:198.51.100.1 ip4:192.0.2.20 -all"'
    ]
    assert checks["dkim"][1] == _published_dkim(dkim_dir, "broken.example")
    assert checks["dmarc"][1] == [
        '_dmarc.broken.example. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@broken.example"'
    ]
    assert checks["mx"][1] == ["bounces.elsewhere.example. IN MX 10 mta.broken.example."]
    assert checks["ptr"][1] == [
        "20.2.0.192.in-addr.arpa. IN PTR mta.broken.example.  ; set by whoever owns 192.0.2.20"
    ]
    assert "WARTA_BOUNCE_DOMAIN=bounces.broken.example" in next(
        c.detail for c in report.checks if c.name == "alignment"
    )

    # Publish exactly what the report says (and move the bounce domain as it advises).
    moved = config.model_copy(update={"bounce_domain": "bounces.broken.example"})
    fixes = [r for c in report.checks if c.name != "alignment" for r in c.publish]
    fixes = [f.replace("bounces.elsewhere.example", "bounces.broken.example") for f in fixes]
    alignment = next(c for c in report.checks if c.name == "alignment").publish
    kept = [line for line in BROKEN_ZONE.splitlines() if "_domainkey" not in line]
    with zone_dns(_zone(*kept, *fixes, *alignment[:1])) as zone:
        dns = zone.servers
        fixed = await DomainChecker(moved.model_copy(update={"mta_dns_servers": dns})).check(
            "broken.example"
        )
    assert fixed.ok, fixed
    assert {c.name: c.status for c in fixed.checks} == dict.fromkeys(
        ("spf", "dkim", "dmarc", "alignment", "mx", "ptr"), "pass"
    )


async def test_the_api_and_the_schedule_preflight_run_the_checks(
    settings: Settings, dkim_dir: Path, make_api: MakeApi
) -> None:
    assert len(local_dkim_keys(dkim_dir, "good.example")) == 2
    with zone_dns(BROKEN_ZONE) as zone:
        dns = zone.servers
        config = _settings(settings, dns, dkim_dir, good=False)
        api = await make_api(config.model_copy(update={"preflight_domain_checks": True}))
        checked = await api.get("/api/v1/domains/broken.example/check")
        campaign = await _campaign(api, "news@broken.example")
        refused = await api.post(f"/api/v1/campaigns/{campaign}/schedule")
        invalid = await api.get("/api/v1/domains/not_a_domain/check")

    assert checked.status_code == 200, checked.text
    body = checked.json()
    assert body["ok"] is False and body["helo"] == "mta.broken.example"
    assert [c["name"] for c in body["checks"]] == ["spf", "dkim", "dmarc", "alignment", "mx", "ptr"]
    assert refused.status_code == 409, refused.text
    rules = {error["loc"][2] for error in refused.json()["errors"] if error["loc"][1] == "dns"}
    assert {"DOMAIN_SPF", "DOMAIN_DKIM", "DOMAIN_DMARC"} <= rules
    assert invalid.status_code == 422


async def _campaign(api: httpx.AsyncClient, from_email: str) -> int:
    mailing_list = await post_json(api, "/api/v1/lists", {"name": "domain check"})
    html = '<p>Plenty of honest words for the readers of this newsletter, as every month.</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>'
    return await create_campaign(api, mailing_list["id"], from_email=from_email, html=html)


def test_dkim_keygen_prints_every_record_a_new_domain_needs(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WARTA_")},
        "WARTA_DKIM_DIR": str(tmp_path / "dkim"),
        "WARTA_MTA_HOSTNAME": "mta.news.example",
        "WARTA_BOUNCE_DOMAIN": "bounces.news.example",
        "WARTA_SENDING_IPS": "192.0.2.30,2001:db8::30",
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "warta"), "dkim-keygen", "news.example", "s2026"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert lines[0].startswith('s2026._domainkey.news.example IN TXT "v=DKIM1; k=rsa; p=')
    assert lines[2:] == [
        'bounces.news.example. IN TXT "v=spf1 ip4:192.0.2.30 ip6:2001:db8::30 -all"',
        "bounces.news.example. IN MX 10 mta.news.example.",
        '_dmarc.news.example. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@news.example"',
    ]


async def test_an_unreadable_local_key_fails_the_dkim_check(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "keys" / "good.example").mkdir(parents=True)
    (tmp_path / "keys" / "good.example" / "s1.pem").write_text("not a key")
    with zone_dns(_zone("mta.good.example. 300 IN A 192.0.2.10")) as zone:
        dns = zone.servers
        report = await DomainChecker(_settings(settings, dns, tmp_path / "keys", good=True)).check(
            "good.example"
        )
    dkim = next(check for check in report.checks if check.name == "dkim")
    assert dkim.status == "fail" and "unreadable" in dkim.detail
