"""/healthz: liveness with a database round trip."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.core.http import SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(session: SessionDep) -> JSONResponse:
    """200 when the database answers, 503 otherwise."""
    try:
        await session.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any driver error means "not healthy", never a 500
        return JSONResponse({"status": "unavailable", "database": str(exc)[:200]}, 503)
    return JSONResponse({"status": "ok", "database": "ok"})
