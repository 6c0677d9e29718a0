"""Warta's own content rules: what a built message shows that filters and readers punish.

Pure functions over the message bytes; no daemon, no I/O. Each rule that fires is a
Finding with the points it adds and a sentence saying what to change.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message
from html.parser import HTMLParser
from urllib.parse import urlsplit

GMAIL_CLIP_BYTES = 102 * 1024
"""Gmail shows "[Message clipped]" past this size, hiding the footer and its unsubscribe link."""
MIN_TEXT_WORDS = 5
MIN_CHARS_PER_IMAGE = 200
"""Below this much visible text per image, filters read a message as mostly pictures."""
SHORTENERS = frozenset(
    {
        "bit.ly", "bitly.com", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "buff.ly",
        "rebrand.ly", "cutt.ly", "shorturl.at", "tiny.cc", "bit.do", "rb.gy", "t.ly", "s.id",
        "lnkd.in", "v.gd", "soo.gd", "x.co", "tr.im", "shorte.st", "adf.ly", "qr.ae", "git.io",
    }
)  # fmt: skip
_DOMAIN_TEXT = re.compile(
    r"^(?:https?://)?(?:www\.)?((?:[a-z0-9-]+\.)+[a-z]{2,})(?:[/:?#]\S*)?$", re.I
)
_FILE_SUFFIXES = frozenset({"pdf", "doc", "docx", "xls", "xlsx", "jpg", "jpeg", "png", "gif",
                            "zip", "htm", "html", "txt", "csv", "ics"})  # fmt: skip
_WORD = re.compile(r"\w{2,}")


@dataclass(frozen=True)
class Finding:
    """One reason in a preflight report: where it comes from, its rule, points and advice."""

    source: str
    rule: str
    score: float
    message: str


@dataclass(frozen=True)
class RuleOptions:
    """What the rules need to know beyond the message itself."""

    require_unsubscribe: bool = True
    unsubscribe_prefixes: tuple[str, ...] = ()
    """URL beginnings that count as the unsubscribe (or preferences) link."""
    click_prefix: str = ""
    """Warta's click redirects start with this; `link_targets` are what they lead to, in order."""
    link_targets: tuple[str, ...] = ()
    physical_address: str = ""


@dataclass
class _Html(HTMLParser):
    """Visible text, images and anchors (href, text) of an HTML part."""

    text: list[str] = field(default_factory=list)
    images: int = 0
    anchors: list[tuple[str, str]] = field(default_factory=list)
    _open: list[tuple[str, list[str]]] = field(default_factory=list)
    _hidden: int = 0

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "head", "title"):
            self._hidden += 1
        elif tag == "img":
            width = dict(attrs).get("width") or ""
            if width.strip() not in ("0", "1"):  # a tracking pixel is not a picture
                self.images += 1
        elif tag == "a":
            self._open.append((dict(attrs).get("href") or "", []))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head", "title"):
            self._hidden = max(0, self._hidden - 1)
        elif tag == "a" and self._open:
            href, words = self._open.pop()
            self.anchors.append((href, " ".join("".join(words).split())))

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        self.text.append(data)
        for _, words in self._open:
            words.append(data)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())


def check(raw: bytes, options: RuleOptions) -> list[Finding]:
    """Every Warta rule that fires on the message `raw`."""
    # compat32 parses no header it is not asked for: the default policy's header objects
    # cost more than every rule together.
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    text, html_source, subject = _parts(message)
    html = _Html()
    if html_source is not None:
        html.feed(html_source)
        html.close()
    findings = [
        *_text_part(text, html_source is not None),
        *_images(html),
        *_links(html, text or "", options),
        *_subject(subject),
        *_size(len(raw)),
    ]
    body = f"{html.visible}\n{text or ''}"
    if options.require_unsubscribe and not _has_unsubscribe(html, body, options):
        findings.append(
            _warta(
                "NO_UNSUBSCRIBE_LINK", 2.5,
                "the body has no unsubscribe link: put {{ unsubscribe_url }} in the footer "
                "(the List-Unsubscribe header alone is not enough for readers)",
            )
        )  # fmt: skip
    if options.physical_address and not _contains(body, options.physical_address):
        findings.append(
            _warta(
                "NO_PHYSICAL_ADDRESS", 3.0,
                f"the body does not show the postal address {options.physical_address!r} "
                "(WARTA_PREFLIGHT_PHYSICAL_ADDRESS; CAN-SPAM requires one)",
            )
        )  # fmt: skip
    return findings


def _parts(message: Message) -> tuple[str | None, str | None, str]:
    """The first text/plain and text/html bodies that are not attachments, and the subject."""
    bodies: dict[str, str] = {}
    for part in message.walk():
        kind = part.get_content_type()
        if kind not in ("text/plain", "text/html") or kind in bodies or part.is_multipart():
            continue
        if (part.get("Content-Disposition") or "").lower().startswith("attachment"):
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            charset = part.get_content_charset() or "utf-8"
            try:
                bodies[kind] = payload.decode(charset, "replace")
            except LookupError:
                bodies[kind] = payload.decode("utf-8", "replace")
    raw_subject = str(message.get("Subject", ""))
    try:
        subject = str(make_header(decode_header(raw_subject)))
    except (HeaderParseError, LookupError, UnicodeError):
        subject = raw_subject
    return bodies.get("text/plain"), bodies.get("text/html"), subject


def _warta(rule: str, score: float, message: str) -> Finding:
    return Finding("warta", rule, score, message)


def _text_part(text: str | None, has_html: bool) -> list[Finding]:
    if text is None:
        return [_warta("NO_TEXT_PART", 1.5, "the message has no text/plain part; add a text body")]
    if len(_WORD.findall(text)) < MIN_TEXT_WORDS:
        where = "says almost nothing" if has_html else "is empty"
        return [
            _warta(
                "EMPTY_TEXT_PART", 1.5,
                f"the text/plain part {where}: write a text body that carries the message",
            )
        ]  # fmt: skip
    return []


def _images(html: _Html) -> list[Finding]:
    if not html.images:
        return []
    chars = len(html.visible)
    if len(_WORD.findall(html.visible)) < MIN_TEXT_WORDS:
        return [
            _warta(
                "IMAGE_ONLY", 2.5,
                f"the HTML is {html.images} image(s) and no text: filters treat image-only "
                "mail as spam, and many readers show no images",
            )
        ]  # fmt: skip
    if chars < MIN_CHARS_PER_IMAGE * html.images:
        return [
            _warta(
                "LOW_TEXT_IMAGE_RATIO", 1.0,
                f"{chars} characters of text for {html.images} image(s): add text "
                f"(at least {MIN_CHARS_PER_IMAGE} characters per image)",
            )
        ]  # fmt: skip
    return []


def _links(html: _Html, text: str, options: RuleOptions) -> list[Finding]:
    targets = _resolve(html, options)
    findings = []
    mismatched = [
        (shown, href)
        for (href, shown) in html.anchors
        if (shown_host := _shown_domain(shown))
        and (target_host := _host(targets.get(href, href)))
        and not _same_site(shown_host, target_host)
    ]
    if mismatched:
        shown, href = mismatched[0]
        findings.append(
            _warta(
                "LINK_TEXT_DOMAIN_MISMATCH", 2.0,
                f"{len(mismatched)} link(s) show one domain and lead to another "
                f"(e.g. {shown!r} → {_host(targets.get(href, href))}): phishing filters "
                "flag this; use words, not a URL, as link text",
            )
        )  # fmt: skip
    urls = {*targets.values(), *(href for href, _ in html.anchors), *options.link_targets}
    urls |= set(re.findall(r"https?://[^\s<>\"')]+", text))
    shortened = sorted({host for url in urls if (host := _host(url)) in SHORTENERS})
    if shortened:
        findings.append(
            _warta(
                "URL_SHORTENER", 1.5,
                f"links through {', '.join(shortened)}: spammers hide behind shorteners, so "
                "filters penalise them; link to the real address",
            )
        )  # fmt: skip
    return findings


def _resolve(html: _Html, options: RuleOptions) -> dict[str, str]:
    """Each click redirect in the HTML mapped to its target: link n is the n-th distinct one."""
    if not options.click_prefix:
        return {}
    redirects: list[str] = []
    for href, _ in html.anchors:
        if href.startswith(options.click_prefix) and href not in redirects:
            redirects.append(href)
    return dict(zip(redirects, options.link_targets, strict=False))


def _subject(subject: str) -> list[Finding]:
    findings = []
    letters = [c for c in subject if c.isalpha()]
    if len(letters) >= 8 and all(c.isupper() for c in letters):
        findings.append(_warta("SUBJECT_ALL_CAPS", 1.5, "the subject is all capitals"))
    if "!!!" in subject or subject.count("!") >= 3:
        findings.append(_warta("SUBJECT_EXCLAMATIONS", 1.0, "the subject shouts with '!!!'"))
    return findings


def _size(size: int) -> list[Finding]:
    if size <= GMAIL_CLIP_BYTES:
        return []
    return [
        _warta(
            "GMAIL_CLIPPED", 1.0,
            f"the message is {size // 1024} KB: Gmail clips mail over 102 KB and hides the "
            "rest, unsubscribe link included",
        )
    ]  # fmt: skip


def _has_unsubscribe(html: _Html, body: str, options: RuleOptions) -> bool:
    hrefs = [href for href, _ in html.anchors]
    if any(h.startswith(p) for h in hrefs for p in options.unsubscribe_prefixes):
        return True
    if any(p in body for p in options.unsubscribe_prefixes):
        return True
    return any("unsubscribe" in f"{href} {shown}".lower() for href, shown in html.anchors)


def _contains(body: str, needle: str) -> bool:
    def fold(value: str) -> str:
        return " ".join(value.replace(",", " ").split()).lower()

    return fold(needle) in fold(body)


def _shown_domain(shown: str) -> str:
    matched = _DOMAIN_TEXT.match(shown.strip())
    if matched is None or matched.group(1).rpartition(".")[2].lower() in _FILE_SUFFIXES:
        return ""
    return matched.group(1).lower()


def _host(url: str) -> str:
    try:
        host = urlsplit(url.strip()).hostname or ""
    except ValueError:
        return ""
    return host.lower().removeprefix("www.")


def _same_site(a: str, b: str) -> bool:
    """One is the other or a subdomain of it, or both share their last two labels."""
    if a == b or a.endswith("." + b) or b.endswith("." + a):
        return True
    return a.split(".")[-2:] == b.split(".")[-2:] and len(a.split(".")[-2]) > 3


def total(findings: Sequence[Finding]) -> float:
    """The points of all findings together."""
    return round(sum(f.score for f in findings), 2)
