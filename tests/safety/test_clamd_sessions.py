"""clamd scans over kept IDSESSION connections (`ClamdSessions`), through a relay that counts
connections and cuts them as clamd's idle timeout or a restart would."""

from __future__ import annotations

import asyncio
import gc

import pytest

from app.safety.clamd import ClamdClient, ClamdError, ClamdSessions, ClamdUnavailable
from tests.helpers.daemons import (
    TEST_MALWARE_MARKER,
    TEST_SIGNATURE_NAME,
    ClamdServer,
    DaemonRelay,
    free_port,
)

CLEAN = b"From: a@example.com\r\nSubject: hello\r\n\r\nan ordinary reply\r\n" * 20


async def test_many_scans_share_a_few_connections(clamd_server: ClamdServer) -> None:
    async with DaemonRelay(clamd_server.address) as relay:
        sessions = ClamdSessions(ClamdClient(relay.address), size=3)
        infected = b"x" * (64 * 1024 - 5) + TEST_MALWARE_MARKER + b"y" * 100_000

        verdicts = await asyncio.gather(*(sessions.scan(CLEAN) for _ in range(30)))
        found = await sessions.scan(infected)
        await sessions.aclose()

    assert not any(v.infected for v in verdicts)
    assert found.infected and found.signature is not None
    assert found.signature.startswith(TEST_SIGNATURE_NAME)
    assert 1 <= relay.connections <= 3


async def test_a_session_clamd_closed_is_replaced_and_the_scan_still_answered(
    clamd_server: ClamdServer,
) -> None:
    async with DaemonRelay(clamd_server.address) as relay:
        sessions = ClamdSessions(ClamdClient(relay.address), size=1)
        assert not (await sessions.scan(CLEAN)).infected
        await relay.cut()  # clamd's IdleTimeout, or a restart, while the session was idle

        verdict = await sessions.scan(CLEAN + TEST_MALWARE_MARKER)
        await sessions.aclose()

    assert verdict.infected
    assert relay.connections == 2


async def test_an_error_ends_the_session_and_the_next_scan_opens_another(
    clamd_server: ClamdServer,
) -> None:
    async with DaemonRelay(clamd_server.address) as relay:
        sessions = ClamdSessions(ClamdClient(relay.address), size=1)
        with pytest.raises(ClamdError, match="size limit") as caught:
            await sessions.scan(b"\0" * (31 * 1024 * 1024))
        assert not isinstance(caught.value, ClamdUnavailable)

        assert not (await sessions.scan(CLEAN)).infected
        await sessions.aclose()

    assert relay.connections == 2


async def test_sessions_to_a_clamd_that_is_down_or_silent_are_unavailable(
    silent_daemon: str,
) -> None:
    with pytest.raises(ClamdUnavailable, match="cannot connect"):
        await ClamdSessions(ClamdClient(f"127.0.0.1:{free_port()}")).scan(CLEAN)
    silent = ClamdSessions(ClamdClient(silent_daemon, timeout=0.3))
    with pytest.raises(ClamdUnavailable, match=r"no answer within 0\.3 s"):
        await silent.scan(CLEAN)
    await silent.aclose()


async def test_a_scan_cancelled_midway_does_not_leave_its_session_behind(
    silent_daemon: str,
) -> None:
    # The reply processor stopping while a scan waits: the session is closed, not pooled
    # (its late reply would answer the next scan) and not leaked (filterwarnings=error
    # turns an unclosed transport into a failure).
    async with DaemonRelay(silent_daemon) as relay:
        sessions = ClamdSessions(ClamdClient(relay.address, timeout=30))
        scan = asyncio.create_task(sessions.scan(CLEAN))
        await relay.connected.wait()
        scan.cancel()
        with pytest.raises(asyncio.CancelledError):
            await scan
        assert sessions._idle == []
        await sessions.aclose()
    del scan
    gc.collect()
