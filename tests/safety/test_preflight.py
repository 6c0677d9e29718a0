"""The campaign preflight through the API: schedule, force, the stored report, real spamd."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.core.settings import Settings
from app.safety import preflight
from app.safety.rules import Finding, RuleOptions
from tests.helpers.api import create_campaign, post_json
from tests.helpers.daemons import DaemonRelay, SpamdServer, free_port
from tests.safety.conftest import MakeApi

NEWSLETTER_HTML = """<html><body>
<h1>Town Garden Club: October</h1>
<p>Dear {{ subscriber.name }},</p>
<p>This month we planted forty trees along the river and repaired the old footbridge.
Thank you to everyone who came on Saturday. The next work day is on the 14th, and the
seed swap is at the library on the 21st from ten o'clock. Minutes of the last meeting
are <a href="https://garden.example/minutes">on our website</a>.</p>
<p>Town Garden Club, 12 Mill Lane, Springfield</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> ·
<a href="{{ preferences_url }}">Preferences</a></p>
</body></html>"""
SPAM_HTML = """<html><body>
<p><a href="https://bit.ly/cl41m"><img src="https://prize.example/winner.png"></a></p>
<p>100% FREE!!! Viagra cheap meds. You are a WINNER! Claim your US$25,000,000 lottery
prize, act now, no credit check, risk free, guaranteed!</p>
<p><a href="https://bit.ly/cl41m">https://www.paypal.com/verify</a></p>
</body></html>"""
SPAM_SUBJECT = "FREE MONEY!!! CLAIM YOUR PRIZE NOW"
PLAIN_MESSAGE = (
    b"From: Town Garden Club <news@garden.example>\r\nTo: reader@example.com\r\n"
    b"Subject: Our October newsletter\r\nMessage-ID: <october.1@garden.example>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"This month we planted trees in the park and repaired the old bridge.\r\n"
)


async def _campaign(api: httpx.AsyncClient, subject: str, html: str) -> int:
    mailing_list = await post_json(api, "/api/v1/lists", {"name": f"readers of {subject}"})
    return await create_campaign(
        api, mailing_list["id"], subject=subject, html=html,
        from_email="Town Garden Club <news@garden.example>",
    )  # fmt: skip


async def test_without_spamd_warta_rules_refuse_an_obvious_spam_campaign(
    client: httpx.AsyncClient,
) -> None:
    good = await _campaign(client, "Garden club news for October", NEWSLETTER_HTML)
    bad = await _campaign(client, SPAM_SUBJECT, SPAM_HTML)

    scheduled = await client.post(f"/api/v1/campaigns/{good}/schedule")
    refused = await client.post(f"/api/v1/campaigns/{bad}/schedule")

    assert scheduled.status_code == 200, scheduled.text
    report = scheduled.json()["preflight"]
    assert report["spamd"] == "not configured" and report["passed"]
    assert report["findings"] == [] and report["score"] == 0
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert "WARTA_PREFLIGHT_MAX_SCORE" in problem["detail"] and "force" in problem["detail"]
    rules = {error["loc"][2] for error in problem["errors"]}
    assert {"URL_SHORTENER", "SUBJECT_ALL_CAPS", "SUBJECT_EXCLAMATIONS"} <= rules
    assert "LINK_TEXT_DOMAIN_MISMATCH" in rules and "NO_UNSUBSCRIBE_LINK" in rules
    assert (await client.get(f"/api/v1/campaigns/{bad}")).json()["status"] == "draft"

    stored = await client.get(f"/api/v1/campaigns/{bad}/preflight", params={"stored": True})
    assert stored.status_code == 200
    assert stored.json()["context"] == "schedule" and not stored.json()["passed"]

    forced = await client.post(f"/api/v1/campaigns/{bad}/schedule", params={"force": True})
    assert forced.status_code == 200, forced.text
    assert forced.json()["status"] == "scheduled" and not forced.json()["preflight"]["passed"]
    stored = await client.get(f"/api/v1/campaigns/{bad}/preflight", params={"stored": True})
    assert stored.json()["forced"] is True


async def test_a_required_postal_address_is_checked(settings: Settings, make_api: MakeApi) -> None:
    api = await make_api(
        settings.model_copy(update={"preflight_physical_address": "1 Other Road, Elsewhere"})
    )
    campaign = await _campaign(api, "Garden club news for October", NEWSLETTER_HTML)
    report = (await api.get(f"/api/v1/campaigns/{campaign}/preflight")).json()
    assert [f["rule"] for f in report["findings"]] == ["NO_PHYSICAL_ADDRESS"]


async def test_spamd_scores_the_built_campaign(
    settings: Settings, spamd_server: SpamdServer, make_api: MakeApi
) -> None:
    api = await make_api(settings.model_copy(update={"spamd": spamd_server.address}))
    good = await _campaign(api, "Garden club news for October", NEWSLETTER_HTML)
    # Spammy words alone, with Warta's rules satisfied: spamd must be what refuses it.
    words = NEWSLETTER_HTML.replace(
        "This month we", "100% FREE!!! You are a WINNER! Act now, guaranteed! I am a bank "
        "manager and I need your assistance to transfer US$25,000,000 from the dormant account "
        "of a deceased foreign client. You will receive 30% of the total funds. Reply with "
        "your bank account details. This is strictly confidential and 100% risk free. Buy "
        "Viagra and Cialis online without prescription, lowest prices. We"
    )  # fmt: skip
    spammy = await _campaign(api, "Claim your prize", words)

    checked = await api.get(f"/api/v1/campaigns/{good}/preflight")
    scheduled = await api.post(f"/api/v1/campaigns/{good}/schedule")
    refused = await api.post(f"/api/v1/campaigns/{spammy}/schedule")

    report = checked.json()
    assert report["spamd"] == "scored" and report["passed"], report
    assert report["score"] < 5
    assert scheduled.status_code == 200, scheduled.text
    assert refused.status_code == 409, refused.text
    sources = {error["loc"][1] for error in refused.json()["errors"]}
    assert sources == {"spamassassin"}
    spam_rules = {error["loc"][2] for error in refused.json()["errors"]}
    assert {"DRUGS_ERECTILE", "US_DOLLARS_3"} <= spam_rules
    assert refused.json()["detail"].endswith("or schedule with ?force=true")


async def test_spamd_down_leaves_warta_rules_and_says_so(
    settings: Settings, make_api: MakeApi
) -> None:
    api = await make_api(
        settings.model_copy(update={"spamd": f"127.0.0.1:{free_port()}", "spamd_timeout": 1})
    )
    campaign = await _campaign(api, SPAM_SUBJECT, SPAM_HTML)
    report = (await api.get(f"/api/v1/campaigns/{campaign}/preflight")).json()
    assert report["spamd"].startswith("unavailable: cannot connect")
    assert {f["source"] for f in report["findings"]} == {"warta"}
    assert not report["passed"]


@pytest.mark.parametrize("path", ["/api/v1/campaigns/999/preflight"])
async def test_preflight_of_a_missing_campaign_is_404(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


async def test_preview_and_template_saves_carry_a_preflight(client: httpx.AsyncClient) -> None:
    campaign = await _campaign(client, SPAM_SUBJECT, SPAM_HTML)
    preview = await client.get(f"/api/v1/campaigns/{campaign}/preview")
    assert preview.status_code == 200, preview.text
    assert "URL_SHORTENER" in {f["rule"] for f in preview.json()["preflight"]["findings"]}
    stored = await client.get(f"/api/v1/campaigns/{campaign}/preflight", params={"stored": True})
    assert stored.json()["context"] == "preview"

    created = await post_json(
        client, "/api/v1/templates",
        {"name": "receipt", "subject": "YOUR RECEIPT {{ number }}!!!",
         "html": '<p>{% for item in items %}{{ item }}{% endfor %}<img src="https://shop.example/logo.png"></p>'},
    )  # fmt: skip
    rules = {f["rule"] for f in created["preflight"]["findings"]}
    assert {"SUBJECT_ALL_CAPS", "SUBJECT_EXCLAMATIONS", "IMAGE_ONLY"} <= rules
    assert "NO_UNSUBSCRIBE_LINK" not in rules  # transactional mail needs none
    changed = await client.patch(
        f"/api/v1/templates/{created['id']}",
        json={"subject": "Your receipt {{ number }}", "text": "Thank you for your order at our shop today."},
    )  # fmt: skip
    assert changed.status_code == 200, changed.text
    rules = {f["rule"] for f in changed.json()["preflight"]["findings"]}
    assert rules == {"IMAGE_ONLY"}
    assert (await client.get(f"/api/v1/templates/{created['id']}")).json()["preflight"] is None


async def test_a_message_over_spamc_limit_is_not_sent_to_spamd(
    settings: Settings, spamd_server: SpamdServer, make_api: MakeApi
) -> None:
    api = await make_api(settings.model_copy(update={"spamd": spamd_server.address}))
    huge = NEWSLETTER_HTML.replace("</body>", "<p>" + "garden news " * 35_000 + "</p></body>")
    campaign = await _campaign(api, "Garden club news for October", huge)
    report = (await api.get(f"/api/v1/campaigns/{campaign}/preflight")).json()
    assert report["spamd"] == "skipped: the message is over 512 KB"
    assert [f["rule"] for f in report["findings"]] == ["GMAIL_CLIPPED"]


async def test_stored_reports_go_with_their_campaign_and_template(
    client: httpx.AsyncClient,
) -> None:
    campaign = await _campaign(client, SPAM_SUBJECT, SPAM_HTML)
    assert (await client.get(f"/api/v1/campaigns/{campaign}/preflight")).status_code == 200
    template = await post_json(client, "/api/v1/templates", {"name": "t", "text": "Hello there"})

    assert (await client.delete(f"/api/v1/campaigns/{campaign}")).status_code == 204
    assert (await client.delete(f"/api/v1/templates/{template['id']}")).status_code == 204
    gone = await client.get(f"/api/v1/campaigns/{campaign}/preflight", params={"stored": True})
    assert gone.status_code == 404


async def test_a_test_send_answers_with_the_preflight(api: httpx.AsyncClient, worker: None) -> None:
    campaign = await _campaign(api, SPAM_SUBJECT, SPAM_HTML)
    response = await api.post(
        f"/api/v1/campaigns/{campaign}/test", json={"addresses": ["qa@example.com"]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["replies"]) == 1 and body["replies"][0].startswith("qa@example.com: ")
    assert not body["preflight"]["passed"]  # a test send is never refused, only informed
    stored = await api.get(f"/api/v1/campaigns/{campaign}/preflight", params={"stored": True})
    assert stored.json()["context"] == "test"


async def test_spamd_rules_and_dns_checks_are_asked_at_once(
    settings: Settings, spamd_server: SpamdServer
) -> None:
    # The pending findings (the domain checks' DNS) finish only once spamd has the message:
    # asked one after the other, the preflight would wait for ever.
    async with DaemonRelay(spamd_server.address) as relay:

        async def domain_findings() -> list[Finding]:
            await relay.connected.wait()
            return [Finding("dns", "DOMAIN_DMARC", 3.0, "no DMARC record")]

        async with asyncio.timeout(30):
            report = await preflight.run(
                settings.model_copy(update={"spamd": relay.address}),
                PLAIN_MESSAGE,
                RuleOptions(require_unsubscribe=False),
                pending=domain_findings(),
            )

    assert report.spamd == "scored"
    assert [f.rule for f in report.findings if f.source == "dns"] == ["DOMAIN_DMARC"]
    assert report.score >= 3.0
