"""Per-recipient rendering for every kind of mail: compiled once, rendered for each recipient.

`compile_parts` and `render_parts` are the one render path: campaign mail (`compile_campaign`,
`render`, with the subscriber, campaign and link context) and transactional mail
(`app.messages.content`, with the request's data) only build the context differently.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Protocol

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError
from markupsafe import Markup

from app.mail import tracking
from app.mail.budget import budget
from app.mail.sandbox import (
    TemplateError,
    environment,
    template_line,
    template_view,
)
from app.models import Subscriber

MAX_VALIDATE_OUTPUT = 5_000_000  # characters per part when validating a template


class RenderError(ValueError):
    """A part cannot be rendered for a recipient; the message names the part and the cause."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"{part}: {message}")
        self.part = part
        self.message = message

    def __reduce__(self) -> tuple[type[RenderError], tuple[str, str]]:
        # arq pickles a failed job's exception; keep both arguments across that trip.
        return (type(self), (self.part, self.message))


class OutputTooLarge(RenderError):
    """A part renders to more characters than the caller allows."""


@dataclass(frozen=True, slots=True)
class CompiledParts:
    """A message's subject, HTML and text templates, compiled once; None for an empty body."""

    subject: Template
    html: Template | None
    text: Template | None


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    """One recipient's subject (a single line), HTML body (if any) and text body."""

    subject: str
    html: str | None
    text: str


def compile_parts(subject: str, html: str, text: str) -> CompiledParts:
    """Compile the three parts; TemplateError names the part and line of a syntax error.

    An empty (blank) body is None: an empty text part is derived from the HTML per recipient.
    """
    return CompiledParts(
        subject=_compile(subject, "subject", html=False),
        html=_compile(html, "html", html=True) if html.strip() else None,
        text=_compile(text, "text", html=False) if text.strip() else None,
    )


def render_subject(parts: CompiledParts, context: dict[str, Any], limit: int | None = None) -> str:
    """The subject for one recipient, on a single line (a header cannot hold a line break)."""
    return replace_line_breaks(_render(parts.subject, "subject", context, limit))


def render_parts(
    parts: CompiledParts, context: dict[str, Any], subject: str, limit: int | None = None
) -> RenderedMessage:
    """The bodies for one recipient (after `render_subject`); without a text part, the text
    is derived from the HTML. With `limit`, a part longer than that is OutputTooLarge."""
    html = None if parts.html is None else _render(parts.html, "html", context, limit)
    if parts.text is not None:
        text = _render(parts.text, "text", context, limit)
    else:
        text = html_to_text(html or "")
    return RenderedMessage(subject, html, text)


# --- campaign mail --------------------------------------------------------------------------


class CampaignSource(Protocol):
    """What compiling needs from a campaign (or a stored template with an id)."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def html(self) -> str: ...
    @property
    def text(self) -> str: ...


@template_view
@dataclass(frozen=True, slots=True)
class SubscriberView:
    """The read-only face of a subscriber that templates see."""

    email: str
    name: str
    attributes: Mapping[str, Any]

    @classmethod
    def of(
        cls, email: str, name: str = "", attributes: Mapping[str, Any] | None = None
    ) -> SubscriberView:
        """A view whose attributes are a read-only copy of `attributes`."""
        return cls(email, name, types.MappingProxyType(dict(attributes or {})))

    @classmethod
    def from_model(cls, subscriber: Subscriber) -> SubscriberView:
        """The view of a loaded Subscriber row."""
        return cls.of(subscriber.email, subscriber.name, subscriber.attributes)


@template_view
@dataclass(frozen=True, slots=True)
class CampaignView:
    """The campaign as templates see it; `subject` is the recipient's rendered subject."""

    id: int
    name: str
    subject: str


@dataclass(frozen=True, slots=True)
class Recipient:
    """Everything per recipient that goes into the template context."""

    subscriber: SubscriberView
    unsubscribe_url: str
    preferences_url: str
    view_in_browser_url: str
    list_name: str | None = None
    click_urls: tuple[str, ...] | None = None
    """Signed click URLs by link position, when this render is tracked."""
    open_url: str = ""
    """The open pixel's URL, when this render is tracked."""


@dataclass(frozen=True, slots=True)
class CompiledCampaign(CompiledParts):
    """A campaign's three parts, compiled once and rendered for every recipient."""

    campaign: CampaignView
    links: tuple[str, ...] | None = None
    """The tracked links by position (unescaped), if the campaign tracks; else None."""
    raw_links: tuple[Markup, ...] = ()
    """The same links as written in the source, for renders that are not tracked."""


def compile_campaign(source: CampaignSource, *, track: bool = False) -> CompiledCampaign:
    """Compile subject, HTML and text; an empty text part is derived from the HTML per recipient.

    With `track`, the HTML's static links are rewritten for click tracking and an open
    pixel is added (see app.mail.tracking); the text part is left as written.
    """
    html_source = source.html if source.html.strip() else ""
    tracked = tracking.rewrite(html_source) if track and html_source else None
    if tracked is not None:
        html_source = tracked.html
    parts = compile_parts(source.subject, html_source, source.text)
    if parts.html is None and parts.text is None:
        raise TemplateError("html: the campaign has neither an HTML nor a text body")
    return CompiledCampaign(
        subject=parts.subject,
        html=parts.html,
        text=parts.text,
        campaign=CampaignView(source.id, source.name, source.subject),
        links=tracked.urls if tracked else None,
        raw_links=tuple(Markup(raw) for raw in tracked.raw) if tracked else (),  # noqa: S704
    )


def render(
    compiled: CompiledCampaign, recipient: Recipient, limit: int | None = None
) -> RenderedMessage:
    """Render all parts for one recipient; RenderError names the part that failed.

    The subject renders first; the HTML and text then see it as `campaign.subject`.
    """
    context = _context(compiled.campaign, recipient)
    if compiled.links is not None:
        _add_tracking(context, compiled, recipient)
    subject = render_subject(compiled, context, limit)
    base = compiled.campaign
    context["campaign"] = CampaignView(base.id, base.name, subject)
    return render_parts(compiled, context, subject, limit)


def validate(compiled: CompiledCampaign, sample: Recipient | None = None) -> RenderedMessage:
    """Render against a sample recipient, so undefined names and unsafe code surface at save time.

    Output is streamed and capped, so a template that would build a huge body fails
    here with RenderError instead of exhausting the worker mid-send.
    """
    try:
        return render(compiled, sample or sample_recipient(), MAX_VALIDATE_OUTPUT)
    except OutputTooLarge as exc:
        raise RenderError(exc.part, f"unsafe template: {exc.message}") from None


class UnknownAttributes(Mapping[str, Any]):
    """The attributes of a sample subscriber: none known, and reading any is not an error.

    Validating with them checks everything but per-subscriber data; validate with
    real subscribers too to find attributes some of them lack.
    """

    def __getitem__(self, key: str) -> Any:
        return ChainableUndefined(name=key)

    def __contains__(self, key: object) -> bool:
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def sample_recipient(attributes: Mapping[str, Any] | None = None) -> Recipient:
    """A plausible recipient for previews and validation; without `attributes`, any reads as empty."""
    return Recipient(
        subscriber=SubscriberView(
            "jane.doe@example.com",
            "Jane Doe",
            UnknownAttributes() if attributes is None else types.MappingProxyType(dict(attributes)),
        ),
        unsubscribe_url="https://example.com/u/sample",
        preferences_url="https://example.com/p/sample",
        view_in_browser_url="https://example.com/v/sample",
        list_name="Sample list",
    )


_LINE_BREAKS = dict.fromkeys(
    [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F, 0x85, 0x2028, 0x2029], " "
)


def replace_line_breaks(value: str) -> str:
    """`value` with CR, LF and other control characters replaced by spaces, trimmed.

    (`app.core.text.require_single_line` refuses such a value instead.)
    """
    return value.translate(_LINE_BREAKS).strip()


def _compile(source: str, part: str, *, html: bool) -> Template:
    try:
        return environment(html).from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{part}: line {exc.lineno}: {exc.message}") from None


def _render(template: Template, part: str, context: dict[str, Any], limit: int | None) -> str:
    """One part within a render budget of its own (`app.mail.budget`; an enclosing one's
    deadline holds), refused past `limit` characters (MAX_VALIDATE_OUTPUT without one).

    The chunks are collected before their size is known: what a template can make them add
    up to is bounded by the budget (loop iterations, characters produced), and static text
    repeated by a loop is the same object many times, not many copies.
    """
    limit = MAX_VALIDATE_OUTPUT if limit is None else limit
    try:
        with budget():
            chunks = _chunks(template, context)
    except Exception as exc:
        raise _render_error(part, exc) from exc
    if sum(map(len, chunks)) > limit:
        raise OutputTooLarge(part, f"output exceeds {limit} characters")
    return "".join(chunks)


def _chunks(template: Template, context: dict[str, Any]) -> list[str]:
    """Jinja's `Template.render` without the join, so that the caller can size it first."""
    try:
        return list(template.root_render_func(template.new_context(context)))
    except Exception:
        template.environment.handle_exception()  # raises it again with template line numbers


def _context(campaign: CampaignView, recipient: Recipient) -> dict[str, Any]:
    return {
        "subscriber": recipient.subscriber,
        "campaign": campaign,
        "list": recipient.list_name,
        "unsubscribe_url": recipient.unsubscribe_url,
        "preferences_url": recipient.preferences_url,
        "view_in_browser_url": recipient.view_in_browser_url,
    }


def _add_tracking(
    context: dict[str, Any], compiled: CompiledCampaign, recipient: Recipient
) -> None:
    if recipient.click_urls is not None:
        context[tracking.LINKS_VAR] = recipient.click_urls
    else:
        context[tracking.LINKS_VAR] = compiled.raw_links
    pixel = tracking.pixel_tag(recipient.open_url) if recipient.open_url else ""
    context[tracking.PIXEL_VAR] = Markup(pixel)  # noqa: S704


def _render_error(part: str, exc: Exception) -> RenderError:
    line = template_line(exc)
    where = f"line {line}: " if line else ""
    if isinstance(exc, SecurityError) or (isinstance(exc, OverflowError) and "sandbox" in str(exc)):
        return RenderError(part, f"{where}unsafe template: {exc}")
    if isinstance(exc, UndefinedError):
        return RenderError(part, f"{where}{exc}")
    return RenderError(part, f"{where}{type(exc).__name__}: {exc}")


# --- HTML to text ---------------------------------------------------------------------------

_SKIP = frozenset({"script", "style", "head", "title", "template", "noscript"})
_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "center", "dd", "details", "dialog",
        "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header",
        "main", "nav", "section", "summary", "table", "tbody", "tfoot", "thead", "tr",
        "caption", "body", "html",
    }
)  # fmt: skip
_PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "ul", "ol", "hr"})
_CELL = frozenset({"td", "th"})
_NO_URL_SCHEMES = ("#", "javascript:", "data:")
_BLANK_RUNS = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    """Collects readable text: blocks on their own lines, links as `text (url)`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0
        self._pre = 0
        self._breaks = 0  # newlines owed before the next text
        self._space = False  # a space owed before the next text
        self._links: list[tuple[str | None, int]] = []
        self._lists: list[int] = []  # 0 for ul, else the next number of an ol
        self._bullet = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skip += 1
        elif tag == "body":
            self._skip = 0  # an unclosed <head> ends here
        if self._skip:
            return
        if tag in _BLOCK:
            self._block(1)
        elif tag in _PARAGRAPH:
            self._block(2)
            if tag == "pre":
                self._pre += 1
            elif tag == "ol":
                self._lists.append(1)
            elif tag == "ul":
                self._lists.append(0)
            elif tag == "hr":
                self._text("-" * 20)
                self._block(2)
        elif tag == "li":
            self._block(1)
            number = self._lists[-1] if self._lists else 0
            if number:
                self._lists[-1] += 1
                self._bullet = f"{number}. "
            else:
                self._bullet = "* "
        elif tag == "br":
            self.out.append("\n")
            self._space = False
        elif tag in _CELL:
            self._space = True
        elif tag == "a":
            self._links.append((dict(attrs).get("href"), len(self.out)))
        elif tag == "img":
            alt = (dict(attrs).get("alt") or "").strip()
            if alt:
                self._space = True
                self._text(alt)
                self._space = True

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
            return
        if self._skip:
            return
        if tag in _BLOCK:
            self._block(1)
        elif tag in _PARAGRAPH:
            self._block(2)
            if tag == "pre":
                self._pre = max(0, self._pre - 1)
            elif tag in ("ol", "ul") and self._lists:
                self._lists.pop()
        elif tag == "li":
            self._block(1)
        elif tag in _CELL:
            self._space = True
        elif tag == "a" and self._links:
            self._end_link(*self._links.pop())

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre:
            self._flush()
            self.out.append(data.replace("\r\n", "\n").replace("\r", "\n"))
            return
        words = data.split()
        if not words:
            self._space = self._space or bool(data)
            return
        if data[0].isspace():
            self._space = True
        self._text(" ".join(words))
        self._space = data[-1].isspace()

    def _text(self, text: str) -> None:
        self._flush()
        if self._space and self.out and self.out[-1][-1:] not in ("\n", ""):
            self.out.append(" ")
        if self._bullet:
            self.out.append(self._bullet)
            self._bullet = ""
        self.out.append(text)
        self._space = False

    def _flush(self) -> None:
        if self._breaks:
            if self.out:
                trailing = self._trailing_newlines()
                if trailing < self._breaks:
                    self.out.append("\n" * (self._breaks - trailing))
            self._breaks = 0
            self._space = False

    def _trailing_newlines(self) -> int:
        count = 0
        for chunk in reversed(self.out):
            stripped = chunk.rstrip("\n")
            count += len(chunk) - len(stripped)
            if stripped or count >= 2:
                break
        return count

    def _block(self, breaks: int) -> None:
        self._breaks = max(self._breaks, breaks)

    def _end_link(self, href: str | None, start: int) -> None:
        href = (href or "").strip()
        if not href or href.lower().startswith(_NO_URL_SCHEMES):
            return
        label = "".join(self.out[start:]).strip()
        bare = href[7:] if href.lower().startswith("mailto:") else href
        if label in (href, bare):
            return
        self._space = bool(label)
        self._text(f"({href})")


def html_to_text(html: str) -> str:
    """Readable plain text of an HTML body: the text part derived when a campaign has none."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [line.rstrip() for line in "".join(parser.out).strip().split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines))
