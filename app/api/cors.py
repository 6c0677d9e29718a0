"""CORS for the keyless public API only: the rest of the API is never called from browsers."""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send


class PublicCors:
    """Starlette's CORSMiddleware, applied to paths under `prefix` and nowhere else."""

    def __init__(self, app: ASGIApp, *, prefix: str, origins: str) -> None:
        self.app = app
        self.prefix = prefix
        allowed = [origin.strip().rstrip("/") for origin in origins.split(",") if origin.strip()]
        self.cors = CORSMiddleware(
            app,
            allow_origins=allowed,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
            max_age=3600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
