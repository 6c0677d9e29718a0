"""Inbound tests: the in-process MTA, a DNS server on 127.0.0.1 with the senders' records,
and a DKIM key a 'remote sender' signs with."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.core.settings import Settings
from tests.helpers.daemons import ZoneDns, zone_dns
from tests.helpers.mta_fixtures import engine_settings, mta, remote
from tests.helpers.servers import free_port
from tests.helpers.sinks import SinkHandler

__all__ = ["engine_settings", "mta", "remote"]


@dataclass(frozen=True)
class DkimKey:
    """A sender's DKIM key: the PEM to sign with and the TXT record that publishes it."""

    private_pem: bytes
    record: str


@pytest.fixture
def dkim_key() -> DkimKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return DkimKey(pem, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}")


@pytest.fixture
def dns(dkim_key: DkimKey) -> Iterator[ZoneDns]:
    """The public DNS of two sending domains: reader.example (SPF allows 127.0.0.1, DKIM key,
    DMARC reject) and spoofed.example (SPF allows only 192.0.2.1, DMARC reject)."""
    with zone_dns() as server:
        server.add(
            'reader.example. 60 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"\n'
            f'sel._domainkey.reader.example. 60 IN TXT "{dkim_key.record}"\n'
            '_dmarc.reader.example. 60 IN TXT "v=DMARC1; p=reject"\n'
            'spoofed.example. 60 IN TXT "v=spf1 ip4:192.0.2.1 -all"\n'
            '_dmarc.spoofed.example. 60 IN TXT "v=DMARC1; p=reject"\n'
        )
        yield server


@pytest.fixture
def mta_settings(
    settings: Settings, remote: tuple[str, SinkHandler], tmp_path: Path, dns: ZoneDns
) -> Settings:
    """The MTA of tests/helpers/mta_fixtures.py, with the inbound checks asking the test's
    DNS and replies at their own domain."""
    return settings.model_copy(
        update={
            "mta_submission": f"127.0.0.1:{free_port()}",
            "mta_inbound": f"127.0.0.1:{free_port()}",
            "mta_delivery": "mx",
            "mta_transport_map": json.dumps({"example.com": remote[0]}),
            "mta_spool_dir": tmp_path / "spool",
            "dkim_dir": tmp_path / "dkim",
            "mta_retry_min": 0.2,
            "mta_retry_max": 1,
            "retry_base": 0.2,
            "bounce_domain": "bounces.warta.example",
            "inbound_dns_servers": dns.servers,
            "inbound_domain": "reply.warta.example",
            "inbound_poll_interval": 0.2,
            "webhook_allow_private": True,
            "webhook_poll_interval": 0.05,
            "webhook_settle": 0.0,
        }
    )
