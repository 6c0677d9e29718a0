"""Dependency floors that close known holes: declared in pyproject, and true of what runs."""

from __future__ import annotations

import asyncio
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from tests.helpers.servers import free_port
from tests.helpers.tls import make_pki
from workers.mta.listener import Networks, SubmissionHandler, serve
from workers.mta.spool import Spool

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_aiosmtpd_before_1_4_6_is_refused() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (aiosmtpd,) = [r for r in map(Requirement, dependencies) if r.name == "aiosmtpd"]
    assert not aiosmtpd.specifier.contains("1.4.5")
    assert aiosmtpd.specifier.contains("1.4.6")
    assert Version(metadata.version("aiosmtpd")) >= Version("1.4.6")


async def test_commands_pipelined_behind_starttls_do_not_run_over_tls(tmp_path: Path) -> None:
    # aiosmtpd 1.4.5 kept the plaintext after STARTTLS in its buffer and ran it once TLS was
    # up, as if it had come encrypted (aio-libs/aiosmtpd#380).
    pki = make_pki(tmp_path)
    spool = Spool(tmp_path / "spool")
    spool.recover()
    port = free_port()
    server = await serve(
        SubmissionHandler(spool, Networks.parse("10.0.0.0/8"), max_recipients=10),
        f"127.0.0.1:{port}",
        hostname="mta.example.com",
        max_message_size=100_000,
        idle_timeout=30,
        per_client=10,
        tls_context=pki.server_context(),
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"220 ")
        writer.write(b"EHLO client.example.com\r\n")
        while not (await reader.readline()).startswith(b"250 "):
            pass
        writer.write(b"STARTTLS\r\nQUIT\r\n")  # QUIT is the injected, unencrypted command
        assert (await reader.readline()).startswith(b"220 ")
        await writer.start_tls(pki.client_context(), server_hostname="localhost")
        writer.write(b"NOOP\r\n")
        first = await asyncio.wait_for(reader.readline(), 10)
        assert first.startswith(b"250 "), first  # the answer to NOOP, not 221 to the QUIT
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
        await spool.close()
