"""Per-recipient rendering: context, escaping, derived text, errors and the sandbox."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass

import pytest

from app.mail.rendering import (
    MAX_VALIDATE_OUTPUT,
    CompiledCampaign,
    Recipient,
    RenderError,
    SubscriberView,
    compile_campaign,
    html_to_text,
    render,
    replace_line_breaks,
    sample_recipient,
    validate,
)
from app.mail.sandbox import TemplateError, environment
from app.models import Campaign, Subscriber


@dataclass(frozen=True)
class Source:
    id: int = 7
    name: str = "Weekly"
    subject: str = "Hi {{ subscriber.name }}"
    html: str = "<p>Hello {{ subscriber.name }}</p>"
    text: str = "Hello {{ subscriber.name }}"


def recipient(name: str = "Jane Doe", **attributes: object) -> Recipient:
    return Recipient(
        subscriber=SubscriberView.of("jane@example.com", name, attributes),
        unsubscribe_url="https://example.com/u/tok",
        preferences_url="https://example.com/p/tok",
        view_in_browser_url="https://example.com/v/7/tok",
        list_name="Weekly News",
    )


def compiled(**parts: str) -> CompiledCampaign:
    return compile_campaign(Source(**parts))  # type: ignore[arg-type]


# --- compiling and the context --------------------------------------------------------------


def test_renders_every_part_with_the_whole_context() -> None:
    source = Source(
        subject="{{ subscriber.name }}: {{ campaign.name }} #{{ campaign.id }}",
        html=(
            "<title>{{ campaign.subject }}</title><p>{{ subscriber.email }} {{ list }} "
            "{{ subscriber.attributes.city }}</p><a href='{{ unsubscribe_url }}'>u</a>"
        ),
        text="{{ preferences_url }} {{ view_in_browser_url }} {{ campaign.subject }}",
    )
    rendered = render(compile_campaign(source), recipient(city="Oslo"))
    assert rendered.subject == "Jane Doe: Weekly #7"
    assert rendered.html == (
        "<title>Jane Doe: Weekly #7</title><p>jane@example.com Weekly News Oslo</p>"
        "<a href='https://example.com/u/tok'>u</a>"
    )
    assert (
        rendered.text == "https://example.com/p/tok https://example.com/v/7/tok Jane Doe: Weekly #7"
    )


def test_compiles_once_and_reuses_templates_from_one_environment_per_kind() -> None:
    campaign = compiled()
    assert campaign.html is not None
    assert campaign.text is not None
    assert campaign.html.environment is environment(True)
    assert campaign.subject.environment is environment(False)
    assert campaign.text.environment is environment(False)
    assert environment(True).autoescape is True
    assert environment(False).autoescape is False
    first = render(campaign, recipient("Ann"))
    second = render(campaign, recipient("Bob"))
    assert (first.subject, second.subject) == ("Hi Ann", "Hi Bob")


def test_compiles_an_orm_campaign_and_views_an_orm_subscriber() -> None:
    campaign = Campaign(
        id=3,
        name="N",
        subject="S {{ subscriber.name }}",
        html="<b>{{ subscriber.attributes.plan }}</b>",
        text="",
    )
    attributes = {"plan": "pro"}
    subscriber = Subscriber(email="a@example.com", name="Ann", attributes=attributes)
    view = SubscriberView.from_model(subscriber)
    attributes["plan"] = "changed later"
    rendered = render(
        compile_campaign(campaign),
        Recipient(view, "https://e/u", "https://e/p", "https://e/v"),
    )
    assert rendered.subject == "S Ann"
    assert rendered.html == "<b>pro</b>"
    with pytest.raises(TypeError):
        view.attributes["plan"] = "x"  # type: ignore[index]


def test_list_may_be_none() -> None:
    campaign = compiled(text="{% if list %}on {{ list }}{% else %}no list{% endif %}")
    rendered = render(campaign, Recipient(SubscriberView.of("a@e.com"), "u", "p", "v"))
    assert rendered.text == "no list"
    assert render(campaign, recipient()).text == "on Weekly News"


def test_html_is_escaped_text_and_subject_are_not() -> None:
    campaign = compiled(
        subject="{{ subscriber.name }}",
        html="<p>{{ subscriber.name }}</p>",
        text="{{ subscriber.name }}",
    )
    rendered = render(campaign, recipient("<script>x</script> & Co"))
    assert rendered.html == "<p>&lt;script&gt;x&lt;/script&gt; &amp; Co</p>"
    assert rendered.text == "<script>x</script> & Co"
    assert rendered.subject == "<script>x</script> & Co"


def test_subject_is_a_single_line() -> None:
    campaign = compiled(subject="Hi {{ subscriber.name }}\n")
    rendered = render(campaign, recipient("Jane\r\nBcc: victim@example.com\x00\u2028x"))
    assert rendered.subject == "Hi Jane  Bcc: victim@example.com  x"
    assert replace_line_breaks(" a\tb\x0b\x85c\n") == "a\tb  c"


def test_syntax_errors_name_part_and_line() -> None:
    with pytest.raises(TemplateError, match=r"^html: line 2: .*"):
        compiled(html="<p>\n{% if %}</p>")
    with pytest.raises(TemplateError, match=r"^subject: line 1:"):
        compiled(subject="{{ unclosed")


def test_a_campaign_needs_a_body() -> None:
    with pytest.raises(TemplateError, match="neither an HTML nor a text body"):
        compiled(html="  ", text="")
    text_only = render(compiled(html="", text="plain {{ subscriber.email }}"), recipient())
    assert text_only.html is None
    assert text_only.text == "plain jane@example.com"


# --- errors ---------------------------------------------------------------------------------


def test_undefined_variable_names_part_line_and_variable() -> None:
    campaign = compiled(html="<p>\nHello {{ subscriber.attributes.nickname }}</p>")
    with pytest.raises(RenderError) as info:
        render(campaign, recipient())
    assert info.value.part == "html"
    assert str(info.value).startswith("html: line 2: ")
    assert "nickname" in str(info.value)
    assert isinstance(info.value, ValueError)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.part, str(copy)) == ("html", str(info.value))


@pytest.mark.parametrize("part", ["subject", "html", "text"])
def test_undefined_top_level_name_in_each_part(part: str) -> None:
    campaign = compiled(**{part: "{{ no_such_thing }}"})
    with pytest.raises(RenderError, match=rf"^{part}: line 1: 'no_such_thing' is undefined"):
        render(campaign, recipient())


def test_default_filter_handles_missing_attributes() -> None:
    campaign = compiled(text="Hi {{ subscriber.attributes.nickname | default(subscriber.name) }}")
    assert render(campaign, recipient("Jane")).text == "Hi Jane"


def test_other_template_failures_are_render_errors() -> None:
    with pytest.raises(RenderError, match=r"^text: line 1: ZeroDivisionError"):
        render(compiled(text="{{ 1 // (subscriber.attributes.n - 1) }}"), recipient(n=1))


def test_validate_finds_undefined_names_before_sending() -> None:
    with pytest.raises(RenderError, match=r"^subject: .*'campain' is undefined"):
        validate(compiled(subject="{{ campain.name }}"))
    with pytest.raises(RenderError, match=r"^html: line 1: 'unsubscribe_link' is undefined"):
        validate(compiled(html="<a href='{{ unsubscribe_link }}'>x</a>"))
    with pytest.raises(RenderError, match=r"^text: line 1: .*has no attribute 'nmae'"):
        validate(compiled(text="{{ subscriber.nmae }}"))


def test_validate_against_real_attributes() -> None:
    good = compiled(html="<p>{{ subscriber.attributes.city }}</p>")
    assert validate(good, sample_recipient({"city": "Oslo"})).html == "<p>Oslo</p>"
    with pytest.raises(RenderError, match="has no attribute 'city'"):
        validate(good, sample_recipient({}))  # a subscriber without the attribute
    with pytest.raises(RenderError, match="has no attribute 'city'"):
        validate(good, recipient())


def test_default_sample_accepts_any_attribute() -> None:
    source = (
        "{{ subscriber.attributes.city }}|{{ subscriber.attributes.a.b.c }}|"
        "{{ subscriber.attributes.plan | default('free') }}|{{ 'x' in subscriber.attributes }}|"
        "{{ subscriber.attributes | length }}|{% if subscriber.attributes.vip %}vip{% endif %}"
    )
    assert validate(compiled(text=source)).text == "||free|False|0|"


def test_validate_caps_output_size() -> None:
    campaign = compiled(text="{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}")
    with pytest.raises(
        RenderError, match=rf"unsafe template: output exceeds {MAX_VALIDATE_OUTPUT}"
    ):
        validate(campaign)


# --- the sandbox ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__.os }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ subscriber.__class__ }}",
        "{{ subscriber.attributes.__class__ }}",
        "{{ campaign.__class__.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ self.__dict__ }}",
        "{{ (1).__class__.__base__.__subclasses__() }}",
        "{{ dict.__base__ }}",
        "{{ lipsum.__globals__ }}",
        "{{ subscriber.attributes.items.__self__.__class__ }}",
        "{{ ''.format.__globals__ }}",
        "{{ '{0.__class__}'.format(subscriber) }}",
        "{% set x = [] %}{{ x.append(1) }}",
        "{% set d = {} %}{{ d.update(a=1) }}",
        "{{ range(10**9)|list }}",
        "{{ 'a' * 10**9 }}",
        "{{ [1] * 10**9 }}",
        "{{ 9**(9**9) }}",
        "{{ 9**999999999 }}",
        "{{ '%0999999999d' % 1 }}",
        "{{ '%*d' % (999999999, 1) }}",
        "{{ lipsum(1000000) }}",
    ],
)
def test_sandbox_escapes_and_bombs_are_unsafe_render_errors(source: str) -> None:
    started = time.perf_counter()
    for part in ("html", "text"):
        campaign = compiled(**{part: source})  # compiling must not evaluate it
        with pytest.raises(RenderError, match=rf"^{part}: line 1: unsafe template"):
            render(campaign, recipient())
    with pytest.raises(RenderError, match="unsafe template"):
        validate(compiled(subject=source))
    assert time.perf_counter() - started < 5


def test_safe_uses_of_the_same_features_still_work() -> None:
    source = (
        "{{ subscriber.name.upper() }} {{ subscriber.attributes.keys()|list }} "
        "{{ '-' * 3 }} {{ 2**10 }} {{ '%05.1f' % 3.14159 }} {{ 7 % 3 }} "
        "{{ range(3)|list }} {{ '{}!'.format(subscriber.name) }} "
        "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"
    )
    rendered = render(compiled(text=source), recipient("Jane", city="Oslo"))
    assert rendered.text == "JANE ['city'] --- 1024 003.1 1 [0, 1, 2] Jane! 3"


def test_attribute_fast_path_matches_jinja() -> None:
    source = (
        "{{ subscriber.attributes._hidden }} {{ subscriber.attributes['city'] }} "
        "{{ subscriber.attributes.get('city') }} {{ subscriber.attributes.nested.deep }}"
    )
    rendered = render(
        compiled(text=source), recipient(_hidden="h", city="Oslo", nested={"deep": 1})
    )
    assert rendered.text == "h Oslo Oslo 1"
    with pytest.raises(RenderError, match="has no attribute 'nope'"):
        render(compiled(text="{{ subscriber.attributes.nested.nope }}"), recipient(nested={}))


# --- HTML to text ---------------------------------------------------------------------------


def test_text_part_is_derived_from_html_when_missing() -> None:
    campaign = compiled(
        html=(
            "<h1>Hello {{ subscriber.name }}</h1><p>Read <a href='{{ view_in_browser_url }}'>online</a>.</p>"
        ),
        text="",
    )
    assert campaign.text is None
    rendered = render(campaign, recipient("Jane & <Co>"))
    assert rendered.text == "Hello Jane & <Co>\n\nRead online (https://example.com/v/7/tok)."


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>a</p><p>b</p>", "a\n\nb"),
        ("<div>a</div><div>b</div>", "a\nb"),
        ("a<br>b<br/>c", "a\nb\nc"),
        ("<p>  lots   of\n\n  space  </p>", "lots of space"),
        ("<b>bold</b> <i>italic</i>", "bold italic"),
        ("&amp; &lt; &gt; &quot; &#39; &eacute; &#x263A; &nbsp;x", "& < > \" ' é ☺ x"),
        ("<a href='https://e.com/x'>site</a>", "site (https://e.com/x)"),
        ("<a href='https://e.com'>https://e.com</a>", "https://e.com"),
        ("<a href='mailto:a@e.com'>a@e.com</a>", "a@e.com"),
        ("<a href='mailto:a@e.com'>write</a>", "write (mailto:a@e.com)"),
        ("<a href='#top'>top</a> <a>none</a>", "top none"),
        ("<a href='javascript:x()'>js</a>", "js"),
        ("<ul><li>one</li><li>two</li></ul>", "* one\n* two"),
        ("<ol><li>one<li>two</ol>", "1. one\n2. two"),
        ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>", "a b\nc"),
        ("<head><title>T</title><style>p{}</style></head><body>x</body>", "x"),
        ("<script>alert('<p>')</script>x<style>.a{}</style>", "x"),
        ("<!-- comment --><!--[if mso]><p>mso</p><![endif]-->x", "x"),
        ("<pre>  keep\n    this</pre>", "keep\n    this"),
        ("a<hr>b", "a\n\n--------------------\n\nb"),
        ("<img src='l.png' alt='Logo'>News", "Logo News"),
        ("x<br><br><br><br><br>y", "x\n\ny"),
        ("<head><title>unclosed head<body>text", "text"),
        ("<p>unclosed <b>tags", "unclosed tags"),
        ("1 < 2 and 3 > 2", "1 < 2 and 3 > 2"),
        ("", ""),
    ],
)
def test_html_to_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_html_to_text_of_a_newsletter_layout() -> None:
    html = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>Digest</title></head>
    <body><table width="100%"><tr><td align="center"><table width="600">
      <tr><td><a href="https://e.com/v">View in your browser</a></td></tr>
      <tr><td><h1>Hello Jane!</h1><p>News from <strong>Oslo</strong> &mdash; this week.</p></td></tr>
      <tr><td><h2>Story one</h2><p>Summary text.</p><a class="btn" href="https://e.com/1?a=1&amp;b=2">Read more</a></td></tr>
      <tr><td><a href="https://e.com/p">Preferences</a> &middot; <a href="https://e.com/u">Unsubscribe</a></td></tr>
    </table></td></tr></table></body></html>"""
    assert html_to_text(html) == (
        "View in your browser (https://e.com/v)\n\n"
        "Hello Jane!\n\n"
        "News from Oslo — this week.\n\n"
        "Story one\n\n"
        "Summary text.\n\n"
        "Read more (https://e.com/1?a=1&b=2)\n"
        "Preferences (https://e.com/p) · Unsubscribe (https://e.com/u)"
    )
