"""Warta's own preflight rules, each on a message built to trip it, and none on a good one."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from app.safety.rules import GMAIL_CLIP_BYTES, RuleOptions, check, total

PUBLIC = "https://warta.example"
OPTIONS = RuleOptions(
    unsubscribe_prefixes=(f"{PUBLIC}/u/",),
    click_prefix=f"{PUBLIC}/c/",
    physical_address="",
)
GOOD_HTML = f"""<html><body>
<h1>Garden club news</h1>
<p>This month we planted forty trees along the river and repaired the old bridge. Thank you
to everyone who came on Saturday; the next work day is on the 14th, and the seed swap is
at the library on the 21st. Read the <a href="https://garden.example/minutes">minutes of
the last meeting</a> or visit <a href="https://garden.example/">garden.example</a>.</p>
<img src="https://garden.example/trees.jpg" alt="The new trees">
<p>Town Garden Club, 12 Mill Lane, Springfield</p>
<p><a href="{PUBLIC}/u/abc">Unsubscribe</a></p>
</body></html>"""
GOOD_TEXT = (
    "Garden club news\n\nThis month we planted forty trees along the river.\n"
    f"Town Garden Club, 12 Mill Lane, Springfield\nUnsubscribe: {PUBLIC}/u/abc\n"
)


def _message(subject: str = "Garden club news for October", html: str | None = GOOD_HTML,
             text: str | None = GOOD_TEXT) -> bytes:  # fmt: skip
    message = EmailMessage()
    message["From"] = "Garden Club <news@garden.example>"
    message["To"] = "reader@example.com"
    message["Subject"] = subject
    if text is not None:
        message.set_content(text)
    if html is not None:
        if text is None:
            message.set_content(html, subtype="html")
        else:
            message.add_alternative(html, subtype="html")
    return message.as_bytes()


def _rules(raw: bytes, options: RuleOptions = OPTIONS) -> set[str]:
    return {finding.rule for finding in check(raw, options)}


def test_a_good_newsletter_trips_nothing() -> None:
    options = RuleOptions(
        unsubscribe_prefixes=OPTIONS.unsubscribe_prefixes,
        physical_address="Town Garden Club, 12 Mill Lane,  Springfield",
    )
    assert check(_message(), options) == []


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        (_message(text=None), "NO_TEXT_PART"),
        (_message(text="Hi"), "EMPTY_TEXT_PART"),
        (_message(subject="FREE GIFT FOR OUR READERS"), "SUBJECT_ALL_CAPS"),
        (_message(subject="Last chance!!!"), "SUBJECT_EXCLAMATIONS"),
        (
            _message(
                html='<p><img src="https://x.example/a.png"><img src="https://x.example/b.png">'
                f'<a href="{PUBLIC}/u/a">Unsubscribe</a></p>'
            ),
            "IMAGE_ONLY",
        ),
        (
            _message(
                html="<p>Our autumn sale starts now, with much more inside.</p>"
                + '<img src="https://x.example/a.png">' * 2
                + f'<a href="{PUBLIC}/u/a">Unsubscribe</a>'
            ),
            "LOW_TEXT_IMAGE_RATIO",
        ),
        (
            _message(
                html=GOOD_HTML.replace(
                    'href="https://garden.example/">', 'href="https://evil.example/x">'
                )
            ),
            "LINK_TEXT_DOMAIN_MISMATCH",
        ),
        (
            _message(
                html=GOOD_HTML.replace("https://garden.example/minutes", "https://bit.ly/3xYz")
            ),
            "URL_SHORTENER",
        ),
        (
            _message(
                html=GOOD_HTML.replace(f'<p><a href="{PUBLIC}/u/abc">Unsubscribe</a></p>', ""),
                text="Garden club news, lots of words here today",
            ),
            "NO_UNSUBSCRIBE_LINK",
        ),
        (
            _message(html=GOOD_HTML + "<p>" + "news " * (GMAIL_CLIP_BYTES // 4) + "</p>"),
            "GMAIL_CLIPPED",
        ),
    ],
)
def test_each_rule_fires_on_its_message(raw: bytes, rule: str) -> None:
    found = check(raw, OPTIONS)
    assert rule in {f.rule for f in found}
    assert all(f.source == "warta" and f.score > 0 and f.message for f in found)
    assert total(found) == pytest.approx(sum(f.score for f in found))


def test_a_missing_postal_address_is_found_only_when_one_is_required() -> None:
    bare = _message(
        html=GOOD_HTML.replace("12 Mill Lane", ""), text="A text part with enough words in it"
    )
    required = RuleOptions(OPTIONS.require_unsubscribe, OPTIONS.unsubscribe_prefixes,
                           physical_address="12 Mill Lane, Springfield")  # fmt: skip
    assert "NO_PHYSICAL_ADDRESS" in _rules(bare, required)
    assert "NO_PHYSICAL_ADDRESS" not in _rules(bare)


def test_click_redirects_are_judged_by_the_link_they_lead_to() -> None:
    # Tracked: each href is Warta's redirect; link n is the n-th distinct redirect.
    html = (
        "<p>Plenty of words so that the text rule stays quiet for this message.</p>"
        f'<a href="{PUBLIC}/c/t0">shop.example</a> <a href="{PUBLIC}/c/t1">our offers</a> '
        f'<a href="{PUBLIC}/c/t0">again</a> <a href="{PUBLIC}/u/x">Unsubscribe</a>'
    )
    honest = RuleOptions(OPTIONS.require_unsubscribe, OPTIONS.unsubscribe_prefixes, OPTIONS.click_prefix,
                         ("https://shop.example/autumn", "https://bit.ly/abc"))  # fmt: skip
    lying = RuleOptions(OPTIONS.require_unsubscribe, OPTIONS.unsubscribe_prefixes, OPTIONS.click_prefix,
                        ("https://phish.example/login", "https://shop.example/"))  # fmt: skip
    assert _rules(_message(html=html), honest) == {"URL_SHORTENER"}
    assert _rules(_message(html=html), lying) == {"LINK_TEXT_DOMAIN_MISMATCH"}


def test_a_file_name_as_link_text_is_not_a_domain() -> None:
    html = GOOD_HTML.replace(">minutes of\nthe last meeting<", ">minutes.pdf<")
    assert "LINK_TEXT_DOMAIN_MISMATCH" not in _rules(_message(html=html))
