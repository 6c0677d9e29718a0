"""The webhook client's guard where the socket opens: a scripted DNS server, real receivers."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import httpx
import pytest

from app.webhooks.egress import EgressGuard, UnsafeUrl, is_public, webhook_client
from tests.helpers.receivers import receiver
from tests.helpers.scripted_dns import ScriptedDns
from tests.helpers.tls import make_pki


async def test_https_verifies_the_certificate_and_sends_sni_for_the_host_name(
    dns: ScriptedDns, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)  # a certificate for localhost and for the IP 127.0.0.1
    server_names: list[str | None] = []
    context = pki.server_context()

    def note_name(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        server_names.append(name)

    context.sni_callback = note_name
    dns.script("localhost", lambda n: "127.0.0.1")
    dns.script("elsewhere.test", lambda n: "127.0.0.1")
    guard = EgressGuard(allow_private=True, dns_servers=[("127.0.0.1", dns.port)])
    async with (
        receiver(tls=context) as secure,
        webhook_client(guard, 5.0, verify=pki.client_context()) as http,
    ):
        port = secure.url.rsplit(":", 1)[1].split("/")[0]
        answer = await http.post(f"https://localhost:{port}/hook", content=b"{}")
        assert answer.status_code == 200
        assert secure.requests[0].headers["host"] == f"localhost:{port}"
        # The socket goes to 127.0.0.1, which the certificate also names; it must still be
        # refused, because the check is against the host name in the URL.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.post(f"https://elsewhere.test:{port}/hook", content=b"{}")
    assert server_names == ["localhost", "elsewhere.test"]
    assert len(secure.requests) == 1


async def test_the_guard_refuses_before_connecting(dns: ScriptedDns) -> None:
    dns.script("inside.test", lambda n: "10.1.2.3")
    guard = EgressGuard(allow_private=False, dns_servers=[("127.0.0.1", dns.port)])
    async with webhook_client(guard, 5.0) as http:
        for url in (
            "http://inside.test/hook",
            "http://127.0.0.1/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://224.0.0.1/hook",
            "http://nowhere.test/hook",
        ):
            with pytest.raises(UnsafeUrl, match=r"not a public address|does not resolve"):
                await http.post(url, content=b"{}")


async def test_without_dns_servers_the_system_resolver_answers_and_is_guarded_too() -> None:
    async with receiver() as local:
        port = local.url.rsplit(":", 1)[1].split("/")[0]
        url = f"http://localhost:{port}/hook"  # /etc/hosts, through getaddrinfo
        async with webhook_client(EgressGuard(allow_private=False), 5.0) as http:
            with pytest.raises(UnsafeUrl, match="not a public address"):
                await http.post(url, content=b"{}")
        async with webhook_client(EgressGuard(allow_private=True), 5.0) as http:
            assert (await http.post(url, content=b"{}")).status_code == 200
        assert len(local.requests) == 1


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1::1", True),
        ("64:ff9b::5db8:d822", True),  # NAT64 of a public IPv4 address (DNS64 networks)
        ("2002:5db8:d822::", True),  # 6to4 of a public IPv4 address
        ("10.1.2.3", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("ff02::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("64:ff9b::a00:1", False),
        ("2002:7f00:1::", False),
    ],
)
def test_public_means_globally_routable_unicast(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public
