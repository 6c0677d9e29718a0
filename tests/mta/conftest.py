"""The MTA's tests run against an in-process MTA and a 'remote MX' sink."""

from tests.helpers.mta_fixtures import engine_settings, mta, mta_settings, remote

__all__ = ["engine_settings", "mta", "mta_settings", "remote"]
