"""Template resource exhaustion: every allocating method and filter is bounded before it
allocates, loops and output are counted against a render budget, renders have a deadline,
and a bomb that needs no data is refused when the template is saved (`probe`)."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

import pytest

from app.core.errors import Invalid
from app.mail.budget import budget, run_off_loop
from app.mail.guards import MAX_TEXT_LENGTH, text_size
from app.mail.rendering import (
    CompiledCampaign,
    Recipient,
    RenderError,
    SubscriberView,
    compile_campaign,
    render,
)
from app.mail.sandbox import TemplateError, probe
from tests.helpers.template_bombs import BOMBS, OVER


@dataclass(frozen=True)
class Source:
    id: int = 1
    name: str = "c"
    subject: str = "s"
    html: str = ""
    text: str = "x"


def _compiled(text: str) -> CompiledCampaign:
    return compile_campaign(Source(text=text))


def _recipient(**attributes: object) -> Recipient:
    return Recipient(
        subscriber=SubscriberView.of("a@example.com", "A", attributes),
        unsubscribe_url="u",
        preferences_url="p",
        view_in_browser_url="v",
    )


@pytest.mark.parametrize("source", list(BOMBS))
def test_a_bomb_is_refused_at_render_naming_the_limit(source: str) -> None:
    with pytest.raises(RenderError, match="unsafe template") as caught:
        render(_compiled(source), _recipient())
    assert re.search(BOMBS[source], str(caught.value))


@pytest.mark.parametrize("source", list(BOMBS))
def test_a_bomb_that_needs_no_data_is_refused_at_save(source: str) -> None:
    with pytest.raises(TemplateError, match=r"^text: line 1: unsafe template") as caught:
        probe(source, "text")
    assert re.search(BOMBS[source], str(caught.value))


def test_a_bomb_fed_by_data_waits_for_the_data() -> None:
    source = "{{ 'x'.ljust(subscriber.attributes.width) }}"
    probe(source, "html", html=True)  # nothing to say without the data
    assert render(_compiled(source), _recipient(width=3)).text == "x  "
    with pytest.raises(RenderError, match="padded text too long"):
        render(_compiled(source), _recipient(width=OVER))


def test_the_deadline_stops_what_no_single_limit_does() -> None:
    # 2**40 macro calls: each is small, none loops; only the clock stops it.
    source = (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}"
    )
    started = time.monotonic()
    with budget(0.5), pytest.raises(RenderError, match=r"ran longer than 0\.5 s"):
        render(_compiled(source), _recipient())
    assert time.monotonic() - started < 60  # bounded (the figure is not the point)
    with pytest.raises(TemplateError, match="ran longer than"):
        probe(source, "text")


def test_ordinary_templates_are_untouched() -> None:
    source = (
        "{{ 'ab'.center(6, '*') }}|{{ 'a'.ljust(3) }}|{{ '7'.zfill(3) }}|{{ '{:>4}'.format(1) }}"
        "|{{ '%4s'|format('x') }}|{{ 'a-b'.replace('-', '+') }}|{{ 'a\tb'.expandtabs(2) }}"
        "|{{ 'x'|center(3) }}|{{ 'a\nb'|indent(2) }}|{{ 'aa bb'|wordwrap(2, wrapstring='/') }}"
        "|{{ [1, 2]|join(',') }}|{{ ','.join(['a', 'b']) }}|{{ {'a': [1]}|tojson }}"
        "|{{ [1, 2, 3]|batch(2)|list|length }}|{{ [[1], [2]]|sum(start=[]) }}"
        "|{{ 'a' ~ 1 ~ 'b' }}|{{ 'a' + 'b' }}|{{ [1] + [2] }}|{{ 2 ** 10 * 3 }}"
        "|{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}done"
        "|{% set ns = namespace(n=0) %}{% for i in range(5) %}{% set ns.n = ns.n + i %}"
        "{% endfor %}{{ ns.n }}|{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(1) }}"
        "|{% set s %}{{ 'k' * 3 }}{% endset %}{{ s }}"
        "|{% for n in subscriber.attributes.tree recursive %}{{ n.name }}{{ loop(n.kids) }}"
        "{% endfor %}"
        "|{{ ([]|first) is defined }}|{{ subscriber.attributes.city|default('?')|upper }}"
    )
    tree = [{"name": "a", "kids": [{"name": "b", "kids": []}]}]
    text = render(_compiled(source), _recipient(tree=tree)).text
    assert text == (
        '**ab**|a  |007|   1|   x|a+b|a b| x |a\n  b|aa/bb|1,2|a,b|{"a": [1]}|2|[1, 2]'
        "|a1b|ab|[1, 2]|3072|done|10|<1>|kkk|ab|False|?"
    ).replace("{{", "{")
    probe(source, "text")


def test_text_size_counts_what_printing_would_make_and_stops_early() -> None:
    assert text_size("abc") == 3
    assert 10 <= text_size([1, "abcdef", {"k": "v"}]) <= 40
    started = time.monotonic()
    assert text_size([[1] * 100_000] * 100_000) > MAX_TEXT_LENGTH  # 10**10 items, not walked
    assert time.monotonic() - started < 30


async def test_renders_off_the_loop_leave_it_free_and_a_stuck_one_is_abandoned() -> None:
    source = (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}"
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    counting = asyncio.create_task(ticker())
    try:
        with pytest.raises(RenderError, match=r"ran longer than 1 s"):
            await run_off_loop(render, _compiled(source), _recipient(), seconds=1.0)
    finally:
        counting.cancel()
    assert ticks >= 10  # the loop kept running while the render spent its budget
    # A thread stuck in one call (no sandbox hook to stop it): the caller stops waiting.
    with pytest.raises(Invalid, match=r"did not finish rendering within 0\.2 s"):
        await run_off_loop(time.sleep, 2.0, seconds=0.2)


def test_a_template_too_complex_to_compile_quickly_is_refused() -> None:
    # Python's compiler holds the GIL: 20,000 output tags would hold it for most of a second.
    with pytest.raises(TemplateError, match=r"^text: line 1: the template is too complex"):
        _compiled("{{ a }}" * 20_000)
    with pytest.raises(TemplateError, match="too complex"):
        probe("{{ a }}" * 20_000, "text")
    _compiled("<p>static text</p>" * 25_000)  # 450 KB of text is no work to compile
