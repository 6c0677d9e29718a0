"""The API's HTTP server: uvicorn, configured for `warta api` and `warta dev`.

Its own module so that only the commands that serve HTTP import uvicorn (~60 ms of start-up
a process): `warta worker`, `warta mta` and the one-shot commands never do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn

from app.core.settings import Settings


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handlers: the command owns SIGINT and SIGTERM.

    uvicorn's own handlers re-raise the signal once it has stopped serving, which ends the
    process before the command stops the worker, the MTA and the embedded Redis.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave the signals to the command (`app.cli._on_signals`)."""
        yield


def server_for(settings: Settings) -> uvicorn.Server:
    """uvicorn serving the API app on the configured host and port, signals left to us."""
    from app.api.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        proxy_headers=True,
        log_config=None,  # uvicorn's loggers, access log included, go through ours
        log_level=None,
    )
    return _Server(config)


async def serve(server: uvicorn.Server) -> None:
    """Serve until `should_exit`; a failed start raises here instead of exiting the process."""
    try:
        await server.serve()
    except SystemExit:  # uvicorn's answer to a port in use or a failed lifespan start-up
        raise RuntimeError("it did not start (see the log above)") from None
