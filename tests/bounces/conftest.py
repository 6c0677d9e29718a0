"""Bounce tests that go through the MTA use the in-process MTA fixtures."""

from tests.helpers.mta_fixtures import engine_settings, mta, mta_settings, remote

__all__ = ["engine_settings", "mta", "mta_settings", "remote"]
