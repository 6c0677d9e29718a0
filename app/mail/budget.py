"""What one render may spend: wall-clock time, loop iterations and characters produced.

The guards (`app.mail.guards`) refuse single operations that would allocate too much; a
budget bounds what many small ones add up to. It lives in a context variable, set
around each render (`budget`), and is checked by the sandbox's hooks: every call, attribute
and item lookup, binary operation, loop iteration and `{{ … }}` output. A template past a
limit fails with `BudgetExceeded`, naming the limit.

Renders in a request run off the event loop (`run_off_loop`), in a few threads of their own,
so a template that spends its whole budget delays nobody's public page.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from jinja2.exceptions import SecurityError

from app.core.errors import Invalid

MAX_RENDER_SECONDS = 3.0
"""Wall-clock seconds one render (or one request's renders together) may take."""
MAX_LOOP_ITERATIONS = 1_000_000
"""Loop iterations one render may run, all loops and nesting levels together."""
MAX_PRODUCED = 40_000_000
"""Characters one render may produce through `{{ … }}`, counted each time they are emitted
(text captured by `{% set %}` or a macro counts again where it is output)."""
MAX_COMPILE_SECONDS = 30.0
"""How long a request waits for templates to compile off the event loop: compiling cannot be
interrupted, and a body of the largest size the API accepts takes a few seconds."""
RENDER_THREADS = 4
_GRACE = 1.0
"""Seconds past the deadline before a request stops waiting for a render thread (the
sandbox's own checks raise at the deadline; this is for one stuck in a single C call)."""

T = TypeVar("T")


class BudgetExceeded(SecurityError):
    """A render went past one of its limits; the message names it."""


@dataclass
class Budget:
    """The limits of one render and what it has used of them."""

    deadline: float
    seconds: float
    iterations: int = 0
    produced: int = 0


CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "warta_render_budget", default=None
)
"""The budget of the render running in this context (None outside one)."""


class _Scope:
    """Enters a fresh budget; a plain class, not @contextmanager: it wraps every part of
    every render."""

    __slots__ = ("seconds", "token")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> Budget:
        outer = CURRENT.get()
        seconds = self.seconds
        deadline = time.monotonic() + seconds
        if outer is not None and outer.deadline < deadline:
            deadline, seconds = outer.deadline, outer.seconds
        current = Budget(deadline, seconds)
        self.token = CURRENT.set(current)
        return current

    def __exit__(self, *exc_info: object) -> None:
        CURRENT.reset(self.token)


def budget(seconds: float = MAX_RENDER_SECONDS) -> _Scope:
    """A fresh budget for what runs inside (`with budget():`); an enclosing budget's
    deadline still holds."""
    return _Scope(seconds)


def tick() -> None:
    """Refuse to go on past the deadline (cheap enough for every sandbox hook)."""
    current = CURRENT.get()
    if current is not None and time.monotonic() > current.deadline:
        raise BudgetExceeded(
            f"the template ran longer than {current.seconds:g} s, "
            "the time one render may take in the sandbox"
        )


def overproduced() -> BudgetExceeded:
    """The error for a render past MAX_PRODUCED (the sandbox's finalize counts output itself:
    it runs for every `{{ … }}`)."""
    return BudgetExceeded(
        f"the template produced more than {MAX_PRODUCED:,} characters, "
        "the most one render may produce in the sandbox"
    )


def counted(iterable: Iterable[T]) -> Iterable[T]:
    """The items of a template loop, each counted against the budget (and the deadline)."""
    current = CURRENT.get()
    if current is None:
        return iterable
    return _counting(iterable, current)


def _counting(iterable: Iterable[T], current: Budget) -> Iterator[T]:
    for item in iterable:
        current.iterations += 1
        if current.iterations > MAX_LOOP_ITERATIONS:
            raise BudgetExceeded(
                f"the template's loops ran more than {MAX_LOOP_ITERATIONS:,} iterations, "
                "the most one render may run in the sandbox"
            )
        if time.monotonic() > current.deadline:
            tick()
        yield item


@functools.cache
def _threads() -> ThreadPoolExecutor:
    """The render threads, made on first use (a few: a render is CPU-bound)."""
    return ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="warta-render")


async def run_off_loop(
    func: Callable[..., T], /, *args: Any, seconds: float = MAX_RENDER_SECONDS
) -> T:
    """`func(*args)` in a render thread under one budget of `seconds` for all its renders,
    while the event loop serves other requests. Past the deadline (plus a grace for a thread
    stuck in one C call) the request gets Invalid and the thread is left to finish."""
    deadline = time.monotonic() + seconds
    context = contextvars.copy_context()

    def run() -> T:
        left = deadline - time.monotonic()
        if left <= 0:  # waited its whole budget for a free thread
            raise _late(seconds)
        with budget(left) as current:
            current.seconds = seconds
            return func(*args)

    future = asyncio.get_running_loop().run_in_executor(_threads(), context.run, run)
    try:
        return await asyncio.wait_for(future, seconds + _GRACE)
    except TimeoutError:
        raise _late(seconds) from None


def _late(seconds: float) -> Invalid:
    return Invalid(
        f"the template did not finish rendering within {seconds:g} s, "
        "the time one render may take in the sandbox"
    )
