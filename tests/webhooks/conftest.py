"""Fixtures of the webhook tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.scripted_dns import ScriptedDns, scripted_dns


@pytest.fixture
def dns() -> Iterator[ScriptedDns]:
    """A scripted DNS server on 127.0.0.1: the public DNS a webhook's owner controls."""
    with scripted_dns() as server:
        yield server
