"""/public: keyless endpoints for subscription forms embedded on other sites (CORS-enabled)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from app.api.schemas.public import PublicList, PublicSubscriptionAccepted, PublicSubscriptionCreate
from app.audience import subscriptions as service
from app.core.addresses import InvalidAddress, normalize_address
from app.core.errors import Invalid
from app.core.http import SessionDep, SettingsDep
from app.core.ratelimit import RateLimiter
from app.web.subscribe import accept, accepted_text, client_address

router = APIRouter(prefix="/public", tags=["public"])


@router.get("/lists")
async def public_lists(session: SessionDep, settings: SettingsDep) -> list[PublicList]:
    """The public lists, each with the token to subscribe with and its hosted form."""
    secret = settings.effective_secret_key()
    result = []
    for item in await service.public_lists(session):
        token = service.list_token(secret, item.id)
        result.append(
            PublicList(
                token=token,
                name=item.name,
                description=item.description,
                optin=item.optin,
                form_url=f"{settings.public_url}/s/{token}",
            )
        )
    return result


@router.post(
    "/subscriptions",
    status_code=202,
    responses={422: {"description": "Bad address or list"}, 429: {"description": "Rate limited"}},
)
async def subscribe(
    body: PublicSubscriptionCreate, request: Request, session: SessionDep, settings: SettingsDep
) -> PublicSubscriptionAccepted:
    """Subscribe an address; double opt-in lists mail a confirmation link first."""
    limiter = RateLimiter(request.app.state.queue)
    client = client_address(request)
    try:
        address = normalize_address(body.email)
    except InvalidAddress as exc:
        await service.admit(limiter, settings, client, "")
        raise Invalid(f"email: {exc}") from None
    lists = await service.lists_for_tokens(session, settings.effective_secret_key(), body.lists)
    if lists is None:
        raise Invalid("lists: every entry must be the token of a public list")
    if await service.admit(limiter, settings, client, address) is not service.Admission.allowed:
        raise HTTPException(429, "too many subscription attempts", headers={"Retry-After": "3600"})
    await accept(request, session, address, body.name, lists, body.website)
    return PublicSubscriptionAccepted(detail=accepted_text(lists))
