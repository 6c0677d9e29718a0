"""The archive's end-to-end tests run mail through an in-process MTA to a 'remote MX' sink."""

from tests.helpers.mta_fixtures import engine_settings, mta, mta_settings, remote

__all__ = ["engine_settings", "mta", "mta_settings", "remote"]
