"""The Jinja sandbox every campaign and template is compiled in.

Jinja's immutable sandbox stops templates from reaching Python's internals; the guards
(`app.mail.guards`) stop them from exhausting the process: an operation whose result would
be too large is refused before it allocates. What many small operations add up to is bounded
by the render budget (`app.mail.budget`: time, loop iterations, characters produced). Both
are checked in every hook the sandbox has: calls, attribute and item lookups, binary
operations (`*`, `**`, `%`, `+`, and `~`, which the code generator checks), loop iterations
(the code generator counts them), every filter, and each `{{ … }}` output (`finalize`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, MutableMapping
from functools import lru_cache
from types import CodeType, MappingProxyType, TracebackType
from typing import Any, TypeVar, cast

from jinja2 import ChainableUndefined, StrictUndefined, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.mail import guards
from app.mail.budget import budget, counted, tick

MAX_COMPILED_SIZE = 1_500_000
"""Characters of the Python code a template compiles to (a 5 KB newsletter makes 10 KB; the
largest body the API takes, 500 KB, stays under it unless it is mostly tags)."""
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


# --- the environment -------------------------------------------------------------------------


def _is_counted(node: nodes.Node) -> bool:
    return (
        isinstance(node, nodes.Call)
        and isinstance(node.node, nodes.EnvironmentAttribute)
        and node.node.name == "counted"
    )


class GuardedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with loops counted and `~` size-checked before it joins."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        """`{% for %}` over `environment.counted(iterable)` (Jinja allows no custom node)."""
        if not _is_counted(node.iter):
            counter = nodes.EnvironmentAttribute("counted", lineno=node.iter.lineno)
            node.iter = nodes.Call(counter, [node.iter], [], None, None, lineno=node.iter.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        """`a ~ b ~ …` with the parts' sizes checked before they are joined."""
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"{join}(environment.concat_parts((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


class CampaignSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with guards on what could exhaust memory or CPU.

    Intercepting `*`, `**`, `%` and `+` also stops Jinja from folding them at compile
    time, so `{{ 9**(9**9) }}` cannot hang the process that merely saves a template.
    """

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = GuardedCodeGenerator
    concat = staticmethod(guards.concat)

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=guards.finalize, **options)
        self.globals["lipsum"] = guards.lipsum
        self.filters = {name: guards.guarded_filter(name, f) for name, f in self.filters.items()}

    def _compile(self, source: str, filename: str) -> CodeType:
        """Python's compiler holds the GIL for as long as it runs, even in a render thread:
        refuse generated code it would need more than about half a second for."""
        if len(source) > MAX_COMPILED_SIZE:
            raise TemplateSyntaxError(
                f"the template is too complex: compiled, it would exceed {MAX_COMPILED_SIZE:,} "
                "characters (use fewer tags, or split it)",
                lineno=1,
            )
        return super()._compile(source, filename)

    @staticmethod
    def counted(iterable: Iterable[Any]) -> Iterable[Any]:
        """A loop's items, counted against the render budget."""
        return counted(iterable)

    @staticmethod
    def concat_parts(parts: tuple[Any, ...]) -> tuple[Any, ...]:
        """The parts of `a ~ b`, refused if their text together is too long."""
        tick()
        guards.check_length(sum(guards.text_size(part) for part in parts), "concatenation")
        return parts

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
        tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any | Undefined:
        """`obj[argument]`, within the render budget."""
        tick()
        return super().getitem(obj, argument)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one flat dict (Jinja's ChainMap costs ~20% of a render).

        Environment globals are fixed when the environment is built, so a copy
        loses nothing; template globals still never leak into the environment.
        """
        return {**self.globals, **(d or {})}

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """Refuse binary operations whose result would be unreasonably large."""
        tick()
        if operator == "**":
            guards.check_power(left, right)
        elif operator == "*":
            guards.check_repeat(left, right)
            guards.check_repeat(right, left)
            guards.check_product(left, right)
        elif operator == "+":
            guards.check_sum(left, right)
        elif isinstance(left, str):
            guards.check_format(left)
            guards.check_text(right, "format argument")
        return super().call_binop(context, operator, left, right)

    def call(
        __self,  # Jinja's own signature: the names must not clash with keyword arguments
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Call `__obj` from a template: allocating methods checked first, results after,
        a recursive loop's items counted."""
        tick()
        if isinstance(__obj, LoopContext) and args:
            args = (counted(args[0]), *args[1:])
        elif (check := guards.method_check(__obj)) is not None:
            args = check((__obj.__self__, *args), kwargs)[1:]
        return guards.sized(super().call(__context, __obj, *args, **kwargs), "call result")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `format_map`, with widths bounded and the result's size checked."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            tick()
            guards.check_format_spec(template)
            for argument in (*args, *kwargs.values()):
                guards.check_text(argument, "format argument")
            return cast(str, guards.sized(wrapped(*args, **kwargs), "formatted text"))

        return checked


@lru_cache(maxsize=2)
def environment(html: bool) -> CampaignSandbox:
    """One sandboxed environment per kind of output: HTML autoescapes, text does not."""
    return CampaignSandbox(autoescape=html, undefined=StrictUndefined, keep_trailing_newline=True)


@lru_cache(maxsize=2)
def _probe_environment(html: bool) -> CampaignSandbox:
    """The same sandbox where every name is defined enough to read through (save-time probes)."""
    return CampaignSandbox(
        autoescape=html, undefined=ChainableUndefined, keep_trailing_newline=True
    )


def probe(source: str, part: str, *, html: bool = False) -> None:
    """Render `source` once with every name undefined but readable, within a render budget:
    a template that breaks a sandbox limit without any data (a bomb) is a TemplateError
    naming the part, line and limit. Errors that depend on the data are left for the render."""
    try:
        template = _probe_environment(html).from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{part}: line {exc.lineno}: {exc.message}") from None
    size = 0
    try:
        with budget():
            for chunk in template.generate():
                size += len(chunk)
                guards.check_length(size, "output")
    except (SecurityError, MemoryError, OverflowError) as exc:
        if isinstance(exc, OverflowError) and "sandbox" not in str(exc):
            return
        line = template_line(exc)
        where = f"line {line}: " if line else ""
        reason = str(exc) or "the template exhausts memory"
        raise TemplateError(f"{part}: {where}unsafe template: {reason}") from None
    except Exception:  # undefined data, type errors: for the real render to say
        return


def template_line(exc: BaseException) -> int | None:
    """The template line of the innermost template frame in the traceback, if any."""
    line = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
