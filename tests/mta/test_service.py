"""The MTA as a whole: a campaign through it, replies from a remote MX, a kill -9."""

from __future__ import annotations

import asyncio
import json
import signal
import smtplib
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.settings import Settings
from app.mail.dkim import generate_key
from app.models import Send, SendStatus
from tests.helpers.api import eventually, post_json, wait_for_status
from tests.helpers.processes import BIN, worker_env
from tests.helpers.servers import free_port
from tests.helpers.sinks import SinkHandler, smtp_sink
from workers.mta import spool_format
from workers.mta.service import MtaService
from workers.mta.status import instance_name
from workers.mta_process import start_mta


async def _rows(session: AsyncSession, campaign_id: int) -> dict[str, Send]:
    rows = await session.scalars(sa.select(Send).where(Send.campaign_id == campaign_id))
    return {row.email: row for row in rows}


async def test_campaign_through_the_mta_is_signed_delivered_and_recorded(
    mta: MtaService,
    mta_settings: Settings,
    api: httpx.AsyncClient,
    worker: None,
    remote: tuple[str, SinkHandler],
    sessionmaker: Any,
) -> None:
    generate_key(mta_settings.dkim_dir, "example.com", "sel1")
    handler = remote[1]
    handler.rcpt_replies["slow@example.com"] = ["451 4.3.0 try again"]
    handler.rcpt_replies["gone@example.com"] = ["550 5.1.1 no such user"]
    news = (await post_json(api, "/api/v1/lists", {"name": "news"}))["id"]
    for address in ("ok@example.com", "slow@example.com", "gone@example.com"):
        await post_json(api, "/api/v1/subscribers", {"email": address, "lists": [news]})
    campaign = await post_json(
        api,
        "/api/v1/campaigns",
        {
            "name": "c",
            "subject": "Hi",
            "from_email": "news@example.com",
            "list_ids": [news],
            "text": "t",
        },
    )
    await post_json(api, f"/api/v1/campaigns/{campaign['id']}/schedule", {})
    await wait_for_status(api, campaign["id"], "finished")

    async def settled() -> bool:
        async with sessionmaker() as session:
            rows = await _rows(session, campaign["id"])
        return all(r.status in (SendStatus.delivered, SendStatus.bounced) for r in rows.values())

    await eventually(settled)
    async with sessionmaker() as session:
        rows = await _rows(session, campaign["id"])
    assert rows["ok@example.com"].status == SendStatus.delivered
    assert rows["slow@example.com"].status == SendStatus.delivered
    assert rows["gone@example.com"].status == SendStatus.bounced
    assert rows["gone@example.com"].last_reply == "550 5.1.1 no such user"
    received = {item.rcpt_tos[0]: item for item in handler.snapshot()}
    assert set(received) == {"ok@example.com", "slow@example.com"}
    assert "d=example.com" in str(received["ok@example.com"].message["DKIM-Signature"])
    assert list((mta_settings.mta_spool_dir / "msg").iterdir()) == []
    # Rows the MTA has since marked delivered still count toward the recent send rate.
    stats = (await api.get(f"/api/v1/campaigns/{campaign['id']}/stats")).json()
    assert stats["delivered"] == 2
    assert stats["rate_per_second"] > 0


def _submit(address: str, count: int, batch: int = 0) -> list[str]:
    host, _, port = address.rpartition(":")
    replies = []
    with smtplib.SMTP(host, int(port), timeout=10) as client:
        client.ehlo("client.example.com")
        for index in range(batch * count, batch * count + count):
            message = (
                f"From: a@example.com\r\nTo: r{index}@example.com\r\nSubject: {index}\r\n"
                f"Message-ID: <m{index}@test.example>\r\n\r\nbody {index}\r\n"
            ).encode()
            client.mail("a@example.com")
            client.rcpt(f"r{index}@example.com")
            code, reply = client.data(message)
            assert code == 250, reply
            replies.append(reply.decode())
    return replies


@pytest.mark.timeout(120)
async def test_kill_9_after_acknowledging_then_restart_delivers_each_once(
    settings: Settings, tmp_path: Path
) -> None:
    sink_port = free_port()
    mta = settings.model_copy(
        update={
            "mta_submission": f"127.0.0.1:{free_port()}",
            "mta_inbound": f"127.0.0.1:{free_port()}",
            "mta_delivery": "mx",
            # Nothing listens there yet: every delivery attempt is deferred.
            "mta_transport_map": json.dumps({"example.com": f"127.0.0.1:{sink_port}"}),
            "mta_spool_dir": tmp_path / "spool",
        }
    )
    env = {
        **worker_env(mta),
        "WARTA_MTA_SUBMISSION": mta.mta_submission,
        "WARTA_MTA_INBOUND": mta.mta_inbound,
        "WARTA_MTA_DELIVERY": "mx",
        "WARTA_MTA_TRANSPORT_MAP": mta.mta_transport_map,
        "WARTA_MTA_SPOOL_DIR": str(mta.mta_spool_dir),
        "WARTA_MTA_RETRY_MIN": "1",
        "WARTA_MTA_RETRY_MAX": "1",
    }
    log = (tmp_path / "mta.log").open("ab")
    first = subprocess.Popen([BIN / "warta", "mta"], env=env, stdout=log, stderr=log)
    try:
        await eventually(lambda: _listening(mta.mta_submission), within=30)
        replies = await asyncio.to_thread(_submit, mta.mta_submission, 40)
        assert all("queued as" in reply for reply in replies)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    from aiosmtpd.controller import Controller

    handler = SinkHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=sink_port)
    controller.start()
    second = subprocess.Popen([BIN / "warta", "mta"], env=env, stdout=log, stderr=log)
    try:

        async def all_delivered() -> bool:
            return len(handler.snapshot()) >= 40

        await eventually(all_delivered, within=60)
        await asyncio.sleep(1.5)  # one more retry interval: nothing may arrive twice
        counts = Counter(item.rcpt_tos[0] for item in handler.snapshot())
        assert set(counts) == {f"r{i}@example.com" for i in range(40)}
        assert max(counts.values()) == 1
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
        controller.stop()
        log.close()
    assert list((mta.mta_spool_dir / "msg").iterdir()) == []


async def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def test_relayed_mail_that_fails_or_expires_gets_a_dsn_with_null_sender(
    settings: Settings, remote: tuple[str, SinkHandler], tmp_path: Path
) -> None:
    handler = remote[1]
    handler.rcpt_replies["gone@example.com"] = ["550 5.1.1 no such user"]
    handler.rcpt_replies["later@example.com"] = ["451 4.3.0 try later"] * 100
    with smtp_sink() as (origin_address, origin):
        config = settings.model_copy(
            update={
                "mta_submission": f"127.0.0.1:{free_port()}",
                "mta_inbound": f"127.0.0.1:{free_port()}",
                "mta_delivery": "mx",
                "mta_transport_map": json.dumps(
                    {"example.com": remote[0], "example.org": origin_address}
                ),
                "mta_spool_dir": tmp_path / "spool",
                "mta_retry_min": 0.2,
                "mta_retry_max": 0.2,
                "mta_queue_lifetime": 1,
            }
        )
        service = await start_mta(config)
        try:

            def submit() -> None:
                host, _, port = config.mta_submission.rpartition(":")
                with smtplib.SMTP(host, int(port), timeout=10) as client:
                    client.sendmail(
                        "app@example.org",
                        ["gone@example.com", "later@example.com"],
                        b"From: app@example.org\r\nSubject: receipt\r\n"
                        b"Message-ID: <r1@example.org>\r\n\r\nthanks\r\n",
                    )

            await asyncio.to_thread(submit)

            async def two_dsns() -> bool:
                return len(origin.snapshot()) >= 2

            await eventually(two_dsns, within=30)
        finally:
            await service.stop(grace=5)
    dsns = origin.snapshot()
    # aiosmtpd reports the null reverse-path as "<>".
    assert [(item.mail_from, item.rcpt_tos) for item in dsns] == [("<>", ("app@example.org",))] * 2
    statuses = sorted(
        str(part.get("Status"))
        for item in dsns
        for report in item.message.iter_parts()
        if report.get_content_type() == "message/delivery-status"
        for part in report.get_payload()
        if part.get("Final-Recipient")
    )
    assert statuses == ["4.4.7", "5.1.1"]
    assert all(item.message.get_param("report-type") == "delivery-status" for item in dsns)


async def test_queue_api_and_metrics_see_every_mta_instance(
    settings: Settings, api: httpx.AsyncClient, tmp_path: Path
) -> None:
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
    try:
        await asyncio.to_thread(_submit, config.mta_submission, 3)

        async def deferred_and_published() -> bool:
            queue = (await api.get("/api/v1/queue")).json()
            domains = {d["domain"]: d for d in queue["domains"]}
            return domains.get("example.com", {}).get("deferred") == 3

        try:
            await eventually(deferred_and_published, within=15)
        except AssertionError:
            raise AssertionError((await api.get("/api/v1/queue")).text) from None
        queue = (await api.get("/api/v1/queue")).json()
        assert len(queue["instances"]) == 1
        assert queue["instances"][0]["accepted"] == 3

        flushed = await api.post("/api/v1/queue/flush", json={"domain": "example.com"})
        assert flushed.json() == {"instances": 1}
        queue_id = next(iter(spool_format.queued_envelopes(config.mta_spool_dir)))
        bounced = await api.post(f"/api/v1/queue/messages/{queue_id}/bounce")
        assert bounced.json() == {"instances": 1}

        async def bounced_with_a_dsn() -> bool:
            envelopes = spool_format.queued_envelopes(config.mta_spool_dir).values()
            gone = all(env.queue_id != queue_id for env in envelopes)
            return gone and sorted(env.mail_from for env in envelopes) == [
                "",
                "a@example.com",
                "a@example.com",
            ]

        await eventually(bounced_with_a_dsn, within=10)
        bad = await api.delete("/api/v1/queue/messages/not-a-queue-id")
        assert bad.status_code == 422

        metrics = await api.get("/metrics")
        assert metrics.status_code == 200
        assert 'warta_mta_accepted_total{instance="' in metrics.text
        assert "warta_campaigns" in metrics.text
    finally:
        await service.stop(grace=5)


@pytest.mark.timeout(60)
async def test_sigterm_drains_and_keeps_undelivered_mail_spooled(
    settings: Settings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    submission = f"127.0.0.1:{free_port()}"
    env = {
        **worker_env(settings),
        "WARTA_MTA_SUBMISSION": submission,
        "WARTA_MTA_INBOUND": f"127.0.0.1:{free_port()}",
        "WARTA_MTA_DELIVERY": "mx",
        "WARTA_MTA_TRANSPORT_MAP": json.dumps({"example.com": f"127.0.0.1:{free_port()}"}),
        "WARTA_MTA_SPOOL_DIR": str(spool),
        "WARTA_MTA_RETRY_MIN": "60",
    }
    with (tmp_path / "mta.log").open("ab") as log:
        process = subprocess.Popen([BIN / "warta", "mta"], env=env, stdout=log, stderr=log)
    try:
        await eventually(lambda: _listening(submission), within=30)
        await asyncio.to_thread(_submit, submission, 5)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert len(list((spool / "msg").iterdir())) == 5
    assert not await _listening(submission)


async def test_a_resubmission_to_another_instance_is_not_a_second_copy(
    mta_settings: Settings, remote: tuple[str, SinkHandler], tmp_path: Path
) -> None:
    # The sender's first MTA acknowledged, the sender crashed before marking the row, and
    # its retry reached the second MTA: the shared registry must recognise the Message-ID.
    second_settings = mta_settings.model_copy(
        update={
            "mta_submission": f"127.0.0.1:{free_port()}",
            "mta_inbound": f"127.0.0.1:{free_port()}",
            "mta_spool_dir": tmp_path / "spool-2",
        }
    )
    first = await start_mta(mta_settings)
    try:
        second = await start_mta(second_settings)
        try:
            (accepted,) = await asyncio.to_thread(_submit, mta_settings.mta_submission, 1)
            again, fresh = await asyncio.to_thread(_submit, second_settings.mta_submission, 2)

            async def both_delivered() -> bool:
                return len(remote[1].received) >= 2

            await eventually(both_delivered, within=10, what="delivery of the two messages")
        finally:
            await second.stop(grace=5)
    finally:
        await first.stop(grace=5)
    queue_id = accepted.rpartition(" ")[2]
    assert again == f"2.0.0 OK: already queued as {instance_name()}/{queue_id}"
    assert fresh.startswith("2.0.0 OK: queued as ")
    assert sorted(r.message_id for r in remote[1].received) == [
        "<m0@test.example>",
        "<m1@test.example>",
    ]


@pytest.mark.timeout(90)
async def test_several_processes_share_the_port_and_deliver_everything(
    mta_settings: Settings, remote: tuple[str, SinkHandler], tmp_path: Path
) -> None:
    env = {
        **worker_env(mta_settings),
        "WARTA_MTA_SUBMISSION": mta_settings.mta_submission,
        "WARTA_MTA_INBOUND": mta_settings.mta_inbound,
        "WARTA_MTA_DELIVERY": "mx",
        "WARTA_MTA_TRANSPORT_MAP": mta_settings.mta_transport_map,
        "WARTA_MTA_SPOOL_DIR": str(mta_settings.mta_spool_dir),
        "WARTA_MTA_PROCESSES": "2",
    }
    log = (tmp_path / "mta.log").open("ab")
    supervisor = subprocess.Popen([BIN / "warta", "mta"], env=env, stdout=log, stderr=log)
    try:
        spools = [mta_settings.mta_spool_dir / f"instance-{i}" / "env" for i in range(2)]

        async def both_started() -> bool:
            return all(spool.is_dir() for spool in spools)

        await eventually(both_started, within=30, what="both MTA processes' spools")
        await eventually(lambda: _listening(mta_settings.mta_submission), within=30)
        # Separate connections, so the kernel can hand them to either process.
        for batch in range(4):
            replies = await asyncio.to_thread(_submit, mta_settings.mta_submission, 10, batch)
            assert all("queued as" in reply for reply in replies)

        async def all_delivered() -> bool:
            return len(remote[1].snapshot()) >= 40

        await eventually(all_delivered, within=30)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "mta.log").read_text()
    counts = Counter(item.message_id for item in remote[1].snapshot())
    assert len(counts) == 40 and max(counts.values()) == 1
    assert all(list(spool.iterdir()) == [] for spool in spools)  # each drained its own


async def test_the_operators_shaping_and_throttle_rules_are_loaded(
    mta_settings: Settings, tmp_path: Path
) -> None:
    shaping = tmp_path / "shaping.toml"
    shaping.write_text('[rules.tenant]\nmatch = ["*.tenant.example"]\nmessages_per_second = 2\n')
    throttle = tmp_path / "throttle.toml"
    throttle.write_text(
        '[[rule]]\nname = "local-slowdown"\ncodes = [451]\ntext = ["slow down, friend"]\n'
    )
    service = await start_mta(
        mta_settings.model_copy(
            update={"mta_shaping_rules": shaping, "mta_throttle_rules": throttle}
        )
    )
    try:
        shaper = service.agent.shaping.for_destination("mx1.tenant.example")
        assert (shaper.rule.name, shaper.rule.messages_per_second) == ("tenant", 2)
        throttle_rules = service.agent.shaping.throttle_rules
        assert throttle_rules.classify(451, None, "slow down, friend") == "local-slowdown"
    finally:
        await service.stop(grace=5)
