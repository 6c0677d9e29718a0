"""A pure ASGI middleware that caps request bodies, whether or not Content-Length is sent."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem
from app.core.errors import TooLarge


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"the request body exceeds the limit of {limit} bytes")


class BodyLimit:
    """Refuse bodies over `default` bytes, over `uploads` bytes on the upload paths, or over
    the limit `larger` gives a JSON path (messages with attachments)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default: int,
        uploads: int,
        upload_paths: tuple[str, ...],
        larger: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.default = default
        self.uploads = uploads
        self.upload_paths = upload_paths
        self.larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _has_nul(scope):
            response = problem(
                400, "Bad request", "the URL contains a NUL character", instance=scope["path"]
            )
            await response(scope, receive, send)
            return
        upload = scope["path"] in self.upload_paths
        limit = self.uploads if upload else self.larger.get(scope["path"], self.default)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reject(scope, receive, send, limit)
            return
        if declared is None and not upload:
            # No length given (chunked): read the small body here, so an oversized one is a
            # 413 and not whatever error the body parser would make of a cut-off stream.
            body = await _read_capped(receive, limit)
            if body is None:
                await _reject(scope, receive, send, limit)
                return
            await self.app(scope, _replay(body, receive), send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
            return message

        await self.app(scope, limited_receive, send)


def _has_nul(scope: Scope) -> bool:
    raw = scope.get("query_string", b"").lower()
    return b"%00" in raw or b"\x00" in raw or "\x00" in scope["path"]


async def _read_capped(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reject(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    error = _too_large(limit)
    response = problem(
        error.status,
        error.title,
        error.detail,
        instance=scope["path"],
        headers={"connection": "close"},
    )
    await response(scope, receive, send)
