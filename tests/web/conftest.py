"""The engine fixtures (SMTP sink, API, worker) serve the public-page tests too."""

from tests.workers.conftest import api, engine_settings, sink, worker

__all__ = ["api", "engine_settings", "sink", "worker"]
