"""The MTA queue page against a real MTA: its domains and destinations are shown, and a
suspension and resumption from the console reach the MTA (audited); a marketer's is refused."""

from __future__ import annotations

import asyncio
import json
import smtplib
from email.message import EmailMessage
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api.app import create_app
from app.core.settings import Settings
from app.models import AdminRole, AuditEntry
from tests.helpers.admin import make_users, sign_in
from tests.helpers.api import eventually
from tests.helpers.servers import free_port
from workers.mta_process import start_mta


def _submit(address: str, count: int) -> None:
    host, port = address.rsplit(":", 1)
    with smtplib.SMTP(host, int(port)) as client:
        for i in range(count):
            message = EmailMessage()
            message["From"] = "news@warta.example"
            message["To"] = f"user{i}@example.com"
            message["Subject"] = "waiting"
            message.set_content("body")
            client.send_message(message)


async def test_destinations_are_suspended_and_resumed_from_the_console(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await make_users(sessionmaker)
    config = settings.model_copy(
        update={
            "mta_submission": f"127.0.0.1:{free_port()}",
            "mta_inbound": f"127.0.0.1:{free_port()}",
            "mta_delivery": "mx",
            # Nobody listens there: the messages wait, deferred.
            "mta_transport_map": json.dumps({"example.com": f"127.0.0.1:{free_port()}"}),
            "mta_spool_dir": tmp_path / "spool",
            "mta_retry_min": 60,
        }
    )
    service = await start_mta(config)
    app = create_app(settings)
    destination = "mx1.example.net,mx2.example.net"
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            ) as console,
        ):
            await asyncio.to_thread(_submit, config.mta_submission, 2)
            token = await sign_in(console, AdminRole.marketer)
            refused = await console.post("/admin/queue/flush", data={"csrf": token})
            assert refused.status_code == 403  # marketers read the queue, admins act on it

            console.cookies.clear()
            token = await sign_in(console, AdminRole.admin)

            async def shows(*texts: str) -> bool:
                html = (await console.get("/admin/queue")).text
                return all(text in html for text in texts)

            await eventually(
                lambda: shows("<td>example.com</td>"),
                within=20,
                what="the waiting domain",
            )
            suspended = await console.post(
                "/admin/queue/suspend",
                data={"csrf": token, "destination": destination, "seconds": "3600"},
            )
            assert suspended.headers["location"] == "/admin/queue?heard=1"
            await eventually(
                lambda: shows(f"<td>{destination}</td>", "by an operator"),
                within=20,
                what="the suspension",
            )
            resumed = await console.post(
                "/admin/queue/resume", data={"csrf": token, "destination": destination}
            )
            assert resumed.status_code == 303

            async def resumed_there() -> bool:
                html = (await console.get("/admin/queue")).text
                return f"<td>{destination}</td>" in html and "by an operator" not in html

            await eventually(resumed_there, within=20, what="the resumption")
            flushed = await console.post("/admin/queue/flush", data={"csrf": token})
            assert flushed.headers["location"] == "/admin/queue?heard=1"
    finally:
        await service.stop(grace=5)
    async with sessionmaker() as session:
        actions = list(
            await session.scalars(
                sa.select(AuditEntry.action)
                .where(AuditEntry.action.startswith("queue."))
                .order_by(AuditEntry.id)
            )
        )
    assert actions == ["queue.suspend", "queue.resume", "queue.flush"]
