"""What one template operation may allocate: checks that run before it does.

The sandbox (`app.mail.sandbox`) calls these from its hooks. Each refuses, with a
SecurityError naming the limit, an operation whose result would be too large — before the
operation allocates it: `*`, `**`, `%` and `+`, the padding, replacing, joining and
translating methods of text, and the built-in filters that can make more than they are
given (`center`, `indent`, `wordwrap`, `format`, `replace`, `join`, `batch`, `slice`, `sum`,
`tojson`, and every filter that prints a nested container).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Collection, Iterable, Mapping, Sized
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.runtime import Undefined
from jinja2.utils import Namespace, _PassArg, generate_lorem_ipsum

from app.mail.budget import CURRENT, MAX_PRODUCED, counted, overproduced, tick

# Bounds on what one template expression may build; a newsletter needs far less.
MAX_SEQUENCE_LENGTH = 100_000
MAX_POWER_BITS = 4096
MAX_FORMAT_WIDTH = 1000
MAX_LIPSUM_WORDS = 10_000
MAX_TEXT_LENGTH = 20_000_000
"""Characters (or items) of any one value a template builds: a string, a list, an output
(as large as the largest message, WARTA_MESSAGE_MAX_BYTES's default, may be)."""
MAX_INDENT = 64
"""Characters of one indentation step (`tojson`)."""

_FORMAT_WIDTH = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBERS = re.compile(r"\d+")


# --- sizes ----------------------------------------------------------------------------------


def text_size(value: Any, limit: int = MAX_TEXT_LENGTH) -> int:
    """About how many characters `str(value)` has, counted only until past `limit`: a list
    repeated inside a list (`[[1] * 100000] * 100000`) is small to build, huge to print."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, Undefined):
            continue  # printing it fails on its own
        if isinstance(item, str | bytes | bytearray):
            total += len(item)
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, Namespace):
            stack.append(dict(item._Namespace__attrs))
        elif isinstance(item, Collection):
            total += 2 + 2 * len(item)
            stack.extend(item)
        else:
            total += 32  # numbers, views, undefined: a short repr
    return total


def too_long(what: str) -> SecurityError:
    return SecurityError(
        f"{what} too long: the sandbox allows values up to {MAX_TEXT_LENGTH:,} characters"
    )


def check_length(length: int, what: str) -> None:
    if length > MAX_TEXT_LENGTH:
        raise too_long(what)


_SCALARS = (str, int, float, bool, type(None))
_SIZED = (str, bytes, bytearray, list, tuple, set, frozenset, dict)


def check_text(value: Any, what: str) -> None:
    """Refuse a value whose text would be too long (strings cheaply, containers walked)."""
    if not isinstance(value, _SCALARS):
        check_length(text_size(value), what)


def sized(value: Any, what: str) -> Any:
    """Refuse a result longer than any value may be (it exists, but goes no further)."""
    if isinstance(value, _SIZED) and len(value) > MAX_TEXT_LENGTH:
        raise too_long(what)
    return value


# --- operators ------------------------------------------------------------------------------


def check_power(base: Any, exponent: Any) -> None:
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


def check_product(left: Any, right: Any) -> None:
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and left.bit_length() + right.bit_length() > MAX_POWER_BITS
    ):
        raise SecurityError(
            f"product too large: the sandbox allows results up to {MAX_POWER_BITS} bits"
        )


def check_repeat(sequence: Any, times: Any) -> None:
    if (
        isinstance(sequence, Sized)
        and not isinstance(sequence, int)
        and isinstance(times, int)
        and len(sequence) * times > MAX_SEQUENCE_LENGTH
    ):
        raise SecurityError(
            f"repetition too large: the sandbox allows up to {MAX_SEQUENCE_LENGTH} items"
        )


def check_sum(left: Any, right: Any) -> None:
    if isinstance(left, Sized) and isinstance(right, Sized):
        check_length(len(left) + len(right), "sum")


def check_format(template: str) -> None:
    """`%` formatting: no width or precision over MAX_FORMAT_WIDTH, none taken from `*`."""
    for match in _FORMAT_WIDTH.finditer(template):
        for width in match.groups():
            if width == "*" or (width is not None and int(width) > MAX_FORMAT_WIDTH):
                raise SecurityError(
                    f"format width too large: the sandbox allows up to {MAX_FORMAT_WIDTH}"
                )


def check_format_spec(template: str) -> None:
    """`str.format`: the same bound on every number in a field's spec; no nested fields."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError:
        return  # the formatter refuses it itself
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec or any(int(n) > MAX_FORMAT_WIDTH for n in _NUMBERS.findall(spec)):
            raise SecurityError(
                f"format width too large: the sandbox allows up to {MAX_FORMAT_WIDTH}, "
                "and no nested replacement fields in a format spec"
            )


# --- methods and filters that allocate more than they are given ------------------------------

Args = tuple[Any, ...]
Check = Callable[[Args, dict[str, Any]], Args]
"""Checks (positional, keyword) arguments before a call; may return replaced positionals
(an iterable read once, so that checking it does not consume it)."""


def _arg(args: Args, kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _check_width(args: Args, kwargs: dict[str, Any]) -> Args:
    """`str.ljust(width)` and the like: the width is the length of the result."""
    width = _arg(args, kwargs, 1, "width", 0)
    if isinstance(width, int):
        check_length(width, "padded text")
    return args


def _check_expandtabs(args: Args, kwargs: dict[str, Any]) -> Args:
    text, tabsize = args[0], _arg(args, kwargs, 1, "tabsize", 8)
    if isinstance(tabsize, int) and isinstance(text, str | bytes | bytearray):
        tabs = text.count("\t") if isinstance(text, str) else text.count(b"\t")
        check_length(len(text) + tabs * max(tabsize, 0), "expanded text")
    return args


def _check_replace(args: Args, kwargs: dict[str, Any]) -> Args:
    text = args[0]
    old, new = _arg(args, kwargs, 1, "old", None), _arg(args, kwargs, 2, "new", None)
    count = _arg(args, kwargs, 3, "count", -1)
    same = str if isinstance(text, str) else bytes
    if not (isinstance(text, str | bytes | bytearray) and isinstance(old, same)):
        return args  # Python refuses or converts; the result is checked after
    if not isinstance(new, same):
        return args
    times = text.count(old) if old else len(text) + 1  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    check_length(len(text) + times * (len(new) - len(old)), "replaced text")
    return args


def _check_join(args: Args, kwargs: dict[str, Any]) -> Args:
    """`sep.join(items)` and `items|join(sep)`: every item and every separator."""
    separator, items = args[0], list(counted(args[1]))
    size = sum(text_size(item) for item in items)
    check_length(size + text_size(separator) * max(len(items) - 1, 0), "joined text")
    return (separator, items, *args[2:])


def _check_translate(args: Args, kwargs: dict[str, Any]) -> Args:
    text, table = args[0], _arg(args, kwargs, 1, "table", None)
    if isinstance(table, Mapping) and isinstance(text, str):
        longest = max((len(v) for v in table.values() if isinstance(v, str)), default=1)
        check_length(len(text) * max(longest, 1), "translated text")
    return args


def _check_to_bytes(args: Args, kwargs: dict[str, Any]) -> Args:
    length = _arg(args, kwargs, 1, "length", 1)
    if isinstance(length, int):
        check_length(length, "bytes")
    return args


_METHOD_CHECKS: dict[tuple[type, str], Check] = {
    **{
        (kind, name): _check_width
        for kind in (str, bytes, bytearray)
        for name in ("ljust", "rjust", "center", "zfill")
    },
    **{(kind, "expandtabs"): _check_expandtabs for kind in (str, bytes, bytearray)},
    **{(kind, "replace"): _check_replace for kind in (str, bytes, bytearray)},
    **{(kind, "join"): _check_join for kind in (str, bytes, bytearray)},
    (str, "translate"): _check_translate,
    (int, "to_bytes"): _check_to_bytes,
}
"""(receiver type, method) → the check of a call `receiver.method(*args)`; args[0] is the
receiver."""


def method_check(function: Any) -> Check | None:
    receiver = getattr(function, "__self__", None)
    name = getattr(function, "__name__", "")
    for kind in type(receiver).__mro__:
        check = _METHOD_CHECKS.get((kind, name))
        if check is not None:
            return check
    return None


def _filter_text(args: Args, kwargs: dict[str, Any]) -> Args:
    """Filters that turn their value into text."""
    check_text(args[0], "text")
    return args


def _filter_indent(args: Args, kwargs: dict[str, Any]) -> Args:
    text, width = args[0], _arg(args, kwargs, 1, "width", 4)
    check_text(text, "text")
    step = width if isinstance(width, int) else len(str(width))
    check_length(step, "indentation")
    lines = str(text).count("\n") + 1
    check_length(len(str(text)) + lines * step, "indented text")
    return args


def _filter_wordwrap(args: Args, kwargs: dict[str, Any]) -> Args:
    text, wrapstring = args[0], _arg(args, kwargs, 3, "wrapstring", None)
    check_text(text, "text")
    length = len(str(text))
    # Each line holds at least one character: at most that many separators.
    check_length(length + (length + 1) * len(str(wrapstring or "\n")), "wrapped text")
    return args


def _filter_format(args: Args, kwargs: dict[str, Any]) -> Args:
    check_format(str(args[0]))
    for value in (*args, *kwargs.values()):
        check_text(value, "format argument")
    return args


def _filter_join(args: Args, kwargs: dict[str, Any]) -> Args:
    separator = _arg(args, kwargs, 1, "d", "")
    checked = _check_join((separator, args[0]), {})
    return (checked[1], *args[1:])


def _filter_count(name: str, position: int) -> Check:
    def check(args: Args, kwargs: dict[str, Any]) -> Args:
        count = _arg(args, kwargs, position, name, 0)
        if isinstance(count, int) and count > MAX_SEQUENCE_LENGTH:
            raise SecurityError(f"{name} too large: the sandbox allows up to {MAX_SEQUENCE_LENGTH}")
        return args

    return check


def _filter_sum(args: Args, kwargs: dict[str, Any]) -> Args:
    """Summing lists or strings concatenates them, once per item: count the result first."""
    start = _arg(args, kwargs, 2, "start", 0)
    if isinstance(start, int | float):
        return args
    items = list(counted(args[0]))
    attribute = _arg(args, kwargs, 1, "attribute", None)
    sizes = [len(item) for item in items if isinstance(item, Sized) and attribute is None]
    check_length(text_size(start) + sum(sizes), "sum")
    return (items, *args[1:])


def _filter_tojson(args: Args, kwargs: dict[str, Any]) -> Args:
    indent = _arg(args, kwargs, 1, "indent", None)
    step = indent if isinstance(indent, int) else len(str(indent or ""))
    if step > MAX_INDENT:
        raise SecurityError(f"indent too large: the sandbox allows up to {MAX_INDENT}")
    check_length(text_size(args[0]) * (1 + step), "JSON")
    return args


_FILTER_CHECKS: dict[str, Check] = {
    **dict.fromkeys(
        (
            "string", "e", "escape", "forceescape", "safe", "urlencode", "xmlattr", "title",
            "upper", "lower", "capitalize", "trim", "striptags", "truncate", "wordcount",
            "urlize", "pprint",
        ),
        _filter_text,
    ),
    "center": lambda args, kwargs: _check_width(_filter_text(args, kwargs), kwargs),
    "replace": lambda args, kwargs: _check_replace(_filter_text(args, kwargs), kwargs),
    "indent": _filter_indent,
    "wordwrap": _filter_wordwrap,
    "format": _filter_format,
    "join": _filter_join,
    "batch": _filter_count("linecount", 1),
    "slice": _filter_count("slices", 1),
    "sum": _filter_sum,
    "tojson": _filter_tojson,
}  # fmt: skip
"""Checks of the built-in filters' (value, *arguments) before they run."""


def guarded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """The filter, checked before (its allocating arguments) and after (its result's size)."""
    check = _FILTER_CHECKS.get(name)
    passed = 1 if _PassArg.from_obj(function) is not None else 0  # context or environment

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        if check is not None and len(args) > passed:
            args = (*args[:passed], *check(args[passed:], kwargs))
        return sized(function(*args, **kwargs), f"{name} result")

    return guarded


def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Jinja's lorem ipsum, refusing sizes that would exhaust memory."""
    if n * max > MAX_LIPSUM_WORDS:
        raise SecurityError(f"lipsum too large: the sandbox allows up to {MAX_LIPSUM_WORDS} words")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def finalize(value: Any) -> Any:
    """Every `{{ … }}` output: its size counted against the render budget (a string was
    checked where it was made; anything else is sized as it would print)."""
    if isinstance(value, str):
        size = len(value)
    else:
        size = value.bit_length() // 3 + 2 if isinstance(value, int) else text_size(value)
        if size > MAX_TEXT_LENGTH:
            raise too_long("output")
    current = CURRENT.get()
    if current is not None:
        current.produced += size
        if current.produced > MAX_PRODUCED:
            raise overproduced()
    return value


def concat(chunks: Iterable[str]) -> str:
    """Captured output (`{% set %}…`, macros, `{% filter %}`), joined once its size is known."""
    parts = list(chunks)
    check_length(sum(map(len, parts)), "captured output")
    return "".join(parts)
