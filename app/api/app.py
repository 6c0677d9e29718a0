"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arq.connections import create_pool
from fastapi import APIRouter, FastAPI

from app import admin
from app.api import problems
from app.api.cors import PublicCors
from app.api.limits import BodyLimit
from app.api.routes import api_keys as api_key_routes
from app.api.routes import (
    bounces,
    campaigns,
    health,
    imports,
    inbound,
    lifecycle,
    lists,
    messages,
    metrics,
    public,
    raw_messages,
    safety,
    subscribers,
    suppressions,
    templates,
    tracking,
    webhooks,
)
from app.api.routes import mta_queue as queue
from app.audience import imports as import_jobs
from app.core import api_keys
from app.core.database import create_engine, create_sessionmaker, unit_of_work
from app.core.redis import arq_redis_settings, resolve_redis_url
from app.core.settings import Settings, get_settings
from app.web import archive, broadcast_unsubscribe, preferences, subscribe, unsubscribe
from app.web import tracking as tracking_pages

API_PREFIX = "/api/v1"
UPLOAD_PATHS = (f"{API_PREFIX}/subscribers/import", "/admin/imports")  # API and console CSV
PUBLIC_PREFIX = f"{API_PREFIX}/public/"
MESSAGE_PATHS = (f"{API_PREFIX}/messages", f"{API_PREFIX}/messages/batch")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; engines are created at startup, not at import."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        redis_url, embedded = settings.redis_url, None
        if not redis_url:
            redis_url, embedded = await asyncio.to_thread(resolve_redis_url, settings)
        app.state.queue = await create_pool(arq_redis_settings(redis_url))
        if settings.bootstrap_api_key:
            async with unit_of_work(app.state.sessionmaker) as session:
                await api_keys.ensure_key(session, settings.bootstrap_api_key, "bootstrap")
        async with unit_of_work(app.state.sessionmaker) as session:
            await import_jobs.recover_interrupted(session)
        app.state.imports = import_jobs.ImportRunner(
            app.state.sessionmaker, settings.import_batch_size
        )
        try:
            yield
        finally:
            await app.state.imports.close()
            # Transactional submissions in flight are stored and enqueued before the pool
            # closes (the store first: it hands its ids to the enqueuer).
            for name in ("message_group_store", "message_enqueuer"):
                if (pending := getattr(app.state, name, None)) is not None:
                    await pending.drain()
            await app.state.queue.aclose()
            await engine.dispose()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)

    app = FastAPI(
        title="Warta",
        version="0.1.0",
        description="Self-hosted newsletter and bulk-mail service.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    problems.install(app)
    api = APIRouter(prefix=API_PREFIX)
    for module in (
        messages,  # first: routes are matched in order, and POST /messages is the hot one
        lists,
        subscribers,
        imports,
        templates,
        campaigns,
        lifecycle,
        suppressions,
        queue,
        tracking,
        public,
        bounces,
        webhooks,
        raw_messages,
        safety,
        inbound,
        api_key_routes,
    ):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(health.router)
    app.include_router(metrics.router)
    for pages in (unsubscribe, preferences, subscribe, archive, tracking_pages):
        app.include_router(pages.router)
    app.include_router(broadcast_unsubscribe.router)
    admin.install(app)
    app.add_middleware(
        BodyLimit,
        default=settings.max_json_bytes,
        uploads=settings.max_upload_bytes,
        upload_paths=UPLOAD_PATHS,
        larger=dict.fromkeys(MESSAGE_PATHS, settings.message_max_request_bytes),
    )
    app.add_middleware(PublicCors, prefix=PUBLIC_PREFIX, origins=settings.public_cors_origins)
    return app
