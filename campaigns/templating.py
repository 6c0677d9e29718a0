"""The Jinja sandbox every campaign and template is compiled in."""

from __future__ import annotations

from functools import lru_cache

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """A template cannot be compiled; the message names the part and line."""


@lru_cache(maxsize=2)
def environment(html: bool) -> ImmutableSandboxedEnvironment:
    """One sandboxed environment per kind of output: HTML autoescapes, text does not."""
    return ImmutableSandboxedEnvironment(
        autoescape=html, undefined=StrictUndefined, keep_trailing_newline=True
    )


def check_syntax(source: str, part: str, *, html: bool = False) -> nodes.Template:
    """Parse `source`, raising TemplateError that names `part` and the line on failure."""
    try:
        return environment(html).parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{part}: line {exc.lineno}: {exc.message}") from None
