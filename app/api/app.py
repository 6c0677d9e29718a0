"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from app.api import problems
from app.api.limits import BodyLimit
from app.api.routes import campaigns, health, lists, subscribers, suppressions, templates
from app.database import create_engine, create_sessionmaker, unit_of_work
from app.services import api_keys
from app.settings import Settings, get_settings

API_PREFIX = "/api/v1"
UPLOAD_PATHS = (f"{API_PREFIX}/subscribers/import",)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; engines are created at startup, not at import."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        if settings.bootstrap_api_key:
            async with unit_of_work(app.state.sessionmaker) as session:
                await api_keys.ensure_key(session, settings.bootstrap_api_key, "bootstrap")
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="Warta",
        version="0.1.0",
        description="Self-hosted newsletter and bulk-mail service.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    problems.install(app)
    api = APIRouter(prefix=API_PREFIX)
    for module in (lists, subscribers, templates, campaigns, suppressions):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(health.router)
    app.add_middleware(
        BodyLimit,
        default=settings.max_json_bytes,
        uploads=settings.max_upload_bytes,
        upload_paths=UPLOAD_PATHS,
    )
    return app
