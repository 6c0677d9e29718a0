"""The Jinja sandbox every campaign and template is compiled in."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import MutableMapping, Sized
from functools import lru_cache
from types import MappingProxyType
from typing import Any, TypeVar, cast

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum

# Bounds on what one template expression may build; a newsletter needs far less.
MAX_SEQUENCE_LENGTH = 100_000
MAX_POWER_BITS = 4096
MAX_FORMAT_WIDTH = 1000
MAX_LIPSUM_WORDS = 10_000

_FORMAT_WIDTH = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_MAPPING_ATTRIBUTES = frozenset(dir(dict)) | frozenset(dir(MappingProxyType))
_VIEW_FIELDS: dict[type, frozenset[str]] = {}

ViewT = TypeVar("ViewT")


def template_view(cls: type[ViewT]) -> type[ViewT]:
    """Mark a frozen dataclass of plain data as safe to read field by field in templates.

    The sandbox then answers `view.field` without its per-access safety checks,
    which are most of the cost of rendering a personalised newsletter.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"{cls.__name__} must be a frozen dataclass")
    _VIEW_FIELDS[cls] = frozenset(
        f.name for f in dataclasses.fields(cast(Any, cls)) if not f.name.startswith("_")
    )
    return cls


class TemplateError(ValueError):
    """A template cannot be compiled; the message names the part and line."""


class CampaignSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with guards on arithmetic that could exhaust memory or CPU.

    Intercepting `*`, `**` and `%` also stops Jinja from folding them at compile
    time, so `{{ 9**(9**9) }}` cannot hang the process that merely saves a template.
    """

    intercepted_binops = frozenset({"*", "**", "%"})

    def getattr(self, obj: Any, attribute: str) -> Any | Undefined:
        """`obj.attribute`, with fast paths for template views and plain mappings.

        Both give exactly what the sandbox would: a view's public field, or the item
        of a dict whose attribute lookup would fail (Jinja then tries the item).
        """
        kind = type(obj)
        fields = _VIEW_FIELDS.get(kind)
        if fields is not None and attribute in fields:
            return getattr(obj, attribute)
        if (kind is dict or kind is MappingProxyType) and attribute not in _MAPPING_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one flat dict (Jinja's ChainMap costs ~20% of a render).

        Environment globals are fixed when the environment is built, so a copy
        loses nothing; template globals still never leak into the environment.
        """
        return {**self.globals, **(d or {})}

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Refuse binary operations whose result would be unreasonably large."""
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_repeat(left, right)
            _check_repeat(right, left)
        elif isinstance(left, str):
            _check_format(left)
        return super().call_binop(context, operator, left, right)


def _check_power(base: Any, exponent: Any) -> None:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and abs(base) > 1
        and exponent > 0
        and base.bit_length() * exponent > MAX_POWER_BITS
    ):
        raise SecurityError(
            f"power too large: the sandbox allows results up to {MAX_POWER_BITS} bits"
        )


def _check_repeat(sequence: Any, times: Any) -> None:
    if (
        isinstance(sequence, Sized)
        and not isinstance(sequence, int)
        and isinstance(times, int)
        and len(sequence) * times > MAX_SEQUENCE_LENGTH
    ):
        raise SecurityError(
            f"repetition too large: the sandbox allows up to {MAX_SEQUENCE_LENGTH} items"
        )


def _check_format(template: str) -> None:
    for match in _FORMAT_WIDTH.finditer(template):
        for width in match.groups():
            if width == "*" or (width is not None and int(width) > MAX_FORMAT_WIDTH):
                raise SecurityError(
                    f"format width too large: the sandbox allows up to {MAX_FORMAT_WIDTH}"
                )


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Jinja's lorem ipsum, refusing sizes that would exhaust memory."""
    if n * max > MAX_LIPSUM_WORDS:
        raise SecurityError(f"lipsum too large: the sandbox allows up to {MAX_LIPSUM_WORDS} words")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


@lru_cache(maxsize=2)
def environment(html: bool) -> CampaignSandbox:
    """One sandboxed environment per kind of output: HTML autoescapes, text does not."""
    env = CampaignSandbox(autoescape=html, undefined=StrictUndefined, keep_trailing_newline=True)
    env.globals["lipsum"] = _lipsum
    return env


def check_syntax(source: str, part: str, *, html: bool = False) -> nodes.Template:
    """Parse `source`, raising TemplateError that names `part` and the line on failure."""
    try:
        return environment(html).parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{part}: line {exc.lineno}: {exc.message}") from None
