"""Campaign rendering and message building throughput, on one core.

A ~5 KB personalised HTML newsletter with a text part is rendered (Jinja, sandboxed,
compiled once) and built into MIME bytes for N recipients. Figures: render only,
build only, render+build (the worker's hot path), and deriving the text part from
the HTML for campaigns that have none. Target: render+build ≥ 3,000 messages/s.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from app.mail.identity import SiteIdentity
from app.mail.mime import Address, OutgoingMessage, build_message, message_id
from app.mail.rendering import (
    CompiledCampaign,
    Recipient,
    RenderedMessage,
    SubscriberView,
    compile_campaign,
    html_to_text,
    render,
)
from bench.results import Row
from campaigns.composer import click_urls, open_url

TARGET = 3_000
DEFAULT_MESSAGES = 20_000
CITIES = ("Oslo", "Lagos", "Lima", "Hanoi", "Quito", "Perth", "Tunis", "Zürich")
PLANS = ("free", "pro", "team")

SUBJECT = "{{ subscriber.name.split()[0] }}, your {{ subscriber.attributes.city }} digest #42 ☕"

SUMMARY = (
    "After months of debate the council approved the plan on Tuesday. Residents along "
    "the route say they welcome the quieter streets, while shop owners worry about two "
    "years of construction &mdash; here is what changes and when."
)

# A campaign body as a marketer writes it: static HTML with merge tags in it.
ARTICLE_HTML = """<tr><td style="padding:0 24px 24px 24px">
<h2 style="font-size:18px;margin:0 0 8px 0">Story {n}: the city council &amp; the new tram line</h2>
<p style="margin:0 0 12px 0;line-height:1.5">{summary}</p>
<a class="btn" href="https://news.example.com/2026/11/story-{n}?utm_source=newsletter&amp;utm_medium=email&amp;utm_campaign={{{{ campaign.id }}}}&amp;s={{{{ subscriber.attributes.sid }}}}">Read more</a>
</td></tr>
"""

ARTICLE_TEXT = """
Story {n}: the city council & the new tram line
{summary}
Read more: https://news.example.com/2026/11/story-{n}?s={{{{ subscriber.attributes.sid }}}}
"""

ARTICLES = range(1, 7)

HTML = (
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ campaign.subject }}</title>
<style>body{margin:0;padding:0;background:#f4f4f4}td{font-family:Helvetica,Arial,sans-serif}
.btn{background:#1a73e8;color:#fff;padding:10px 18px;border-radius:4px;text-decoration:none}</style>
</head><body>
<table role="presentation" width="100%" cellpadding="0" cellspacing="0"><tr><td align="center">
<table role="presentation" width="600" cellpadding="0" cellspacing="0" style="background:#ffffff">
<tr><td style="padding:12px;font-size:12px;color:#888"><a href="{{ view_in_browser_url }}">View in your browser</a></td></tr>
<tr><td style="padding:24px"><h1 style="font-size:24px;margin:0">Hello {{ subscriber.name }}!</h1>
<p>Here is what happened in {{ subscriber.attributes.city }} this week, picked for your
{{ subscriber.attributes.plan }} plan. Thank you for reading {{ list }}.</p></td></tr>
"""
    + "".join(ARTICLE_HTML.format(n=n, summary=SUMMARY) for n in ARTICLES)
    + """{% if subscriber.attributes.plan == "free" %}
<tr><td style="padding:24px;background:#fff8e1"><strong>Upgrade to Pro</strong> and get the
full archive, offline reading and no ads. <a href="https://news.example.com/upgrade?s={{ subscriber.attributes.sid }}">Upgrade now</a>.</td></tr>
{% else %}
<tr><td style="padding:24px;background:#e8f5e9">Thanks for supporting independent journalism
as a {{ subscriber.attributes.plan|title }} member since {{ subscriber.attributes.since }}.</td></tr>
{% endif %}
<tr><td style="padding:24px;font-size:12px;color:#888;line-height:1.4">
You receive this because {{ subscriber.email }} subscribed to {{ list }}.<br>
<a href="{{ preferences_url }}">Manage preferences</a> &middot;
<a href="{{ unsubscribe_url }}">Unsubscribe</a><br>
Example News Ltd, 1 Example Street, 0150 Oslo, Norway</td></tr>
</table></td></tr></table>
</body></html>
"""
)

TEXT = (
    """Hello {{ subscriber.name }}!

Here is what happened in {{ subscriber.attributes.city }} this week, picked for your
{{ subscriber.attributes.plan }} plan. Thank you for reading {{ list }}.
"""
    + "".join(ARTICLE_TEXT.format(n=n, summary=SUMMARY.replace("&mdash;", "—")) for n in ARTICLES)
    + """
{% if subscriber.attributes.plan == "free" %}Upgrade to Pro: https://news.example.com/upgrade?s={{ subscriber.attributes.sid }}
{% else %}Thanks for supporting us as a {{ subscriber.attributes.plan|title }} member since {{ subscriber.attributes.since }}.
{% endif %}
--
You receive this because {{ subscriber.email }} subscribed to {{ list }}.
Manage preferences: {{ preferences_url }}
Unsubscribe: {{ unsubscribe_url }}
View in your browser: {{ view_in_browser_url }}
"""
)


@dataclass(frozen=True)
class Campaign:
    """The fields compile_campaign reads."""

    id: int
    name: str
    subject: str
    html: str
    text: str


def compiled_newsletter(*, with_text: bool = True) -> CompiledCampaign:
    """The benchmark campaign, compiled once."""
    return compile_campaign(Campaign(42, "Weekly digest", SUBJECT, HTML, TEXT if with_text else ""))


def recipients(count: int) -> list[Recipient]:
    """`count` distinct subscribers with a few attributes each."""
    return [
        Recipient(
            subscriber=SubscriberView.of(
                f"reader{i}@example.com",
                f"Reader Nummer{i} Ødegård",
                {
                    "city": CITIES[i % len(CITIES)],
                    "plan": PLANS[i % len(PLANS)],
                    "sid": f"{i:08x}",
                    "since": 2015 + i % 10,
                },
            ),
            unsubscribe_url=f"https://news.example.com/u/{i:08x}.tok3nAbCdEfGhIjKlMnOp",
            preferences_url=f"https://news.example.com/p/{i:08x}.tok3nAbCdEfGhIjKlMnOp",
            view_in_browser_url=f"https://news.example.com/v/42/{i:08x}",
            list_name="Example News Weekly",
        )
        for i in range(count)
    ]


def outgoing(number: int, recipient: Recipient, rendered: RenderedMessage) -> OutgoingMessage:
    """The message for one recipient, with the headers a campaign send carries."""
    return OutgoingMessage(
        sender=Address("news@example.com", "Example News"),
        recipient=Address(recipient.subscriber.email, recipient.subscriber.name),
        subject=rendered.subject,
        message_id=message_id(f"c42.s{number}", "mta.example.com"),
        text=rendered.text,
        html=rendered.html,
        reply_to=Address("editors@example.com"),
        date=datetime(2026, 11, 26, 9, 0, tzinfo=UTC),
        unsubscribe_url=recipient.unsubscribe_url,
        unsubscribe_mailto=f"unsubscribe+c42.s{number}@bounces.example.com",
        one_click_unsubscribe=True,
        list_id="weekly.news.example.com",
        list_name="Example News Weekly",
        feedback_id="42:weekly:warta",
    )


def _rate(count: int, run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def measure(count: int) -> dict[str, float]:
    """messages/s for each stage over `count` recipients."""
    compiled = compiled_newsletter()
    people = recipients(count)
    rendered = [render(compiled, r) for r in people[:100]]  # warm up, and sizes for the report
    html_bytes = len((rendered[0].html or "").encode())
    text_bytes = len(rendered[0].text.encode())

    rendered = []
    render_rate = _rate(count, lambda: rendered.extend(render(compiled, r) for r in people))
    messages = [outgoing(i, r, m) for i, (r, m) in enumerate(zip(people, rendered, strict=True))]
    build_rate = _rate(count, lambda: [build_message(m) for m in messages])

    def render_and_build() -> None:
        for i, r in enumerate(people):
            build_message(outgoing(i, r, render(compiled, r)))

    both_rate = _rate(count, render_and_build)
    derived = compiled_newsletter(with_text=False)
    derived_count = max(count // 10, 100)

    def render_and_build_derived() -> None:
        for i, r in enumerate(people[:derived_count]):
            build_message(outgoing(i, r, render(derived, r)))

    derived_rate = _rate(derived_count, render_and_build_derived)
    derive_count = max(count // 10, 100)
    html_samples = [m.html or "" for m in rendered[:derive_count]]
    derive_rate = _rate(derive_count, lambda: [html_to_text(h) for h in html_samples])
    # Links made static (no per-recipient query parts), so that every story link is tracked.
    static = re.sub(r"\{\{ (campaign\.id|subscriber\.attributes\.sid) \}\}", "1", HTML)
    tracked = compile_campaign(Campaign(42, "Weekly digest", SUBJECT, static, TEXT), track=True)
    site = SiteIdentity("bench-secret-" + "x" * 40, "https://news.example.com", "mta", "b.example")
    link_count = len(tracked.links or ())

    def render_tracked() -> None:
        # What PreparedCampaign.build adds per recipient: signed click URLs and the pixel.
        for i, r in enumerate(people):
            urls = click_urls(site, i + 1, 42, link_count)
            render(tracked, replace(r, click_urls=urls, open_url=open_url(site, i + 1, 42)))

    tracked_rate = _rate(count, render_tracked)
    message_bytes = len(build_message(messages[0]))
    return {
        "html_bytes": html_bytes,
        "text_bytes": text_bytes,
        "message_bytes": message_bytes,
        "render": render_rate,
        "build": build_rate,
        "render_build": both_rate,
        "html_to_text": derive_rate,
        "render_build_derived": derived_rate,
        "render_tracked": tracked_rate,
        "tracked_links": link_count,
    }


def main(argv: list[str] | None = None) -> list[Row]:
    """Print messages/s: render only, build only, render+build, and with a derived text part."""
    parser = argparse.ArgumentParser(
        description="Campaign rendering and message building throughput."
    )
    parser.add_argument("--messages", type=int, help=f"default {DEFAULT_MESSAGES:,}")
    parser.add_argument("--quick", action="store_true", help="4,000 messages")
    args = parser.parse_args(argv if argv is not None else [])
    args.messages = args.messages or (4000 if args.quick else DEFAULT_MESSAGES)
    figures = measure(args.messages)
    print(
        f"newsletter: html {figures['html_bytes']:.0f} B, text {figures['text_bytes']:.0f} B, "
        f"message {figures['message_bytes']:.0f} B; {args.messages} recipients, one core"
    )
    print(f"render only          {figures['render']:>9,.0f} msg/s")
    print(
        f"render only, tracked {figures['render_tracked']:>9,.0f} msg/s  "
        f"({figures['tracked_links']:.0f} static links signed per recipient, open pixel)"
    )
    print(f"build only           {figures['build']:>9,.0f} msg/s")
    verdict = "ok" if figures["render_build"] >= TARGET else f"BELOW target {TARGET:,}"
    print(f"render+build         {figures['render_build']:>9,.0f} msg/s  ({verdict})")
    print(f"html→text only       {figures['html_to_text']:>9,.0f} msg/s")
    print(
        f"render+build, text derived from HTML {figures['render_build_derived']:>7,.0f} msg/s "
        "(campaigns without a text part)"
    )
    return [
        Row(
            "render + build, 5 KB personalised HTML + text part, one core",
            f"≥ {TARGET:,} msg/s",
            f"{figures['render_build']:,.0f} msg/s (render {figures['render']:,.0f}/s, "
            f"build {figures['build']:,.0f}/s; text derived from the HTML: "
            f"{figures['render_build_derived']:,.0f}/s)",
            "—",
            figures["render_build"] >= TARGET,
        )
    ]


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
