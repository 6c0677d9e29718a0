"""The commands' terminal: one rich console on stderr, made on first use.

rich (~2 MB and ~30 ms of imports) loads only in a process that prints to a person, or
that imports httpx (whose command line needs it): `warta mta` never loads it.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


@cache
def console() -> Console:
    """The console on stderr; soft wrap, so a URL stays one line when piped or logged."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)
