"""/templates"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.api.deps import PathId, require
from app.api.pagination import Page, PageDep, make_page
from app.api.schemas.safety import PreflightRead
from app.api.schemas.templates import TemplateCreate, TemplateRead, TemplateUpdate
from app.core.http import SessionDep, SettingsDep
from app.mail import templates as service
from app.safety import templates as template_preflight

router = APIRouter(prefix="/templates", tags=["templates"])
READ = [Depends(require("templates:read"))]
WRITE = [Depends(require("templates:write"))]


@router.post("", status_code=201, dependencies=WRITE)
async def create_template(
    body: TemplateCreate, session: SessionDep, settings: SettingsDep
) -> TemplateRead:
    """Create a template (its Jinja syntax is checked; its content gets a preflight report)."""
    created = await service.create(session, **body.model_dump())
    report = await template_preflight.check(session, settings, created)
    await session.commit()
    return TemplateRead.model_validate(created).model_copy(
        update={"preflight": report and PreflightRead.of(report)}
    )


@router.get("", dependencies=READ)
async def list_templates(session: SessionDep, page: PageDep) -> Page[TemplateRead]:
    """All templates."""
    found = await service.page(session, page.after_id, page.limit)
    items = [TemplateRead.model_validate(item) for item in found]
    return make_page(items, [item.id for item in found], page.limit)


@router.get("/{template_id}", dependencies=READ)
async def get_template(template_id: PathId, session: SessionDep) -> TemplateRead:
    """One template."""
    return TemplateRead.model_validate(await service.get(session, template_id))


@router.patch("/{template_id}", dependencies=WRITE)
async def update_template(
    template_id: PathId, body: TemplateUpdate, session: SessionDep, settings: SettingsDep
) -> TemplateRead:
    """Change a template (and score its content again)."""
    changed = await service.update(session, template_id, body.model_dump(exclude_unset=True))
    report = await template_preflight.check(session, settings, changed)
    await session.commit()
    return TemplateRead.model_validate(changed).model_copy(
        update={"preflight": report and PreflightRead.of(report)}
    )


@router.delete("/{template_id}", status_code=204, dependencies=WRITE)
async def delete_template(template_id: PathId, session: SessionDep) -> Response:
    """Delete a template that no campaign uses."""
    await service.delete(session, template_id)
    await session.commit()
    return Response(status_code=204)
