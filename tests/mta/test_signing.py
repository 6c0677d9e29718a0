"""The DKIM signing helper process: it signs as the key would, and the MTA never depends on
it (a helper killed, stopped or gone: the signatures it owes are made in the loop, and a
new helper takes over)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from app.mail.dkim import DkimKey
from workers.mta import signing
from workers.mta.signing import SigningHelper

RSA = DkimKey("example.com", "sel1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
ED25519 = DkimKey("example.com", "ed1", ed25519.Ed25519PrivateKey.generate())


def data(index: int) -> bytes:
    return b"from:Shop <shop@example.com>\r\nsubject:Receipt %d\r\ndkim-signature:v=1; b=" % index


@pytest.fixture
async def helper(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SigningHelper]:
    monkeypatch.setattr(signing, "RESTART_AFTER", 0.05)
    started = SigningHelper()
    yield started
    await started.close()


async def next_helper(helper: SigningHelper, gone: int) -> int:
    """The pid of the helper started after `gone` (signing starts it after its pause)."""
    for _ in range(200):
        await helper.sign(RSA, data(0))
        if helper.pid not in (None, gone):
            return helper.pid
        await asyncio.sleep(0.05)
    raise AssertionError("no new helper was started")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_helper_signs_as_the_key_would_and_ends_with_close(
    helper: SigningHelper,
) -> None:
    assert helper.pid is None  # started by the first signature, not before
    for key in (RSA, ED25519):  # both deterministic: the same bytes as signed here
        signed = await asyncio.gather(*(helper.sign(key, data(i)) for i in range(50)))
        assert signed == [key.sign_data(data(i)) for i in range(50)]
    pid = helper.pid
    assert pid is not None and pid != os.getpid()
    assert helper.signed_here == 0  # every one made by the helper
    await helper.close()
    assert helper.pid is None
    await asyncio.sleep(0)  # (the child was waited for: no zombie left)
    assert not alive(pid)
    assert await helper.sign(RSA, data(1)) == RSA.sign_data(data(1))  # after close: here
    assert helper.signed_here == 1 and helper.pid is None


async def test_what_a_killed_helper_owed_is_signed_in_the_loop_and_a_new_one_starts(
    helper: SigningHelper,
) -> None:
    await helper.sign(RSA, data(0))
    first = helper.pid
    assert first is not None
    many = [asyncio.ensure_future(helper.sign(RSA, data(i))) for i in range(300)]
    await asyncio.sleep(0)
    os.kill(first, signal.SIGKILL)
    assert await asyncio.gather(*many) == [RSA.sign_data(data(i)) for i in range(300)]
    assert helper.signed_here > 0  # what it owed when it died (~1 ms a signature)
    second = await next_helper(helper, first)
    # The new helper is sent the key again: it signs with it.
    before = helper.signed_here
    assert await helper.sign(RSA, data(7)) == RSA.sign_data(data(7))
    assert helper.pid == second and helper.signed_here == before


async def test_a_helper_that_stops_answering_is_replaced(
    helper: SigningHelper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signing, "ANSWER_TIMEOUT", 0.5)
    await helper.sign(RSA, data(0))
    stuck = helper.pid
    assert stuck is not None
    os.kill(stuck, signal.SIGSTOP)
    try:
        assert await helper.sign(ED25519, data(3)) == ED25519.sign_data(data(3))
        await next_helper(helper, stuck)
    finally:
        if alive(stuck):
            os.kill(stuck, signal.SIGCONT)
    for _ in range(100):  # killed when it was replaced
        if not alive(stuck):
            break
        await asyncio.sleep(0.05)
    assert not alive(stuck)


async def test_a_signature_the_helper_cannot_make_is_made_in_the_loop(
    helper: SigningHelper,
) -> None:
    """An answer of ERROR (here: a key the helper was never sent) is not the helper's end:
    the loop signs, and the helper stays."""
    await helper.sign(RSA, data(0))
    pid = helper.pid
    running = helper._running
    assert running is not None
    running.keys[ED25519] = 999  # the helper holds no key 999
    assert await helper.sign(ED25519, data(2)) == ED25519.sign_data(data(2))
    assert helper.pid == pid and helper.signed_here == 1


async def test_a_busy_helper_is_not_taken_for_a_silent_one(
    helper: SigningHelper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The silence limit counts from the helper's last answer, not from a request's own
    start: requests queued behind many others wait their turn, the helper stays."""
    monkeypatch.setattr(signing, "ANSWER_TIMEOUT", 1.0)
    await helper.sign(RSA, data(0))
    pid = helper.pid
    # ~1 ms each in the helper: the last waits about twice the limit, with answers all
    # along. (A limit of 0.3 s was once crossed by a stall of this busy host alone.)
    many = await asyncio.gather(*(helper.sign(RSA, data(i)) for i in range(2000)))
    assert helper.pid == pid and helper.signed_here == 0
    assert all(many[i] == RSA.sign_data(data(i)) for i in range(0, 2000, 97))


async def test_a_helper_that_cannot_start_is_tried_again_until_one_starts(
    helper: SigningHelper, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = asyncio.create_subprocess_exec
    failures = 3

    async def flaky(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError("no process for you")
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", flaky)
    assert await helper.sign(RSA, data(0)) == RSA.sign_data(data(0))  # in the loop
    assert helper.pid is None and helper.signed_here == 1
    await next_helper(helper, -1)  # after three failed starts in a row
    assert failures == 0
