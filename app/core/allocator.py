"""The C allocator's arenas: at most two, whatever number of threads allocate.

Every `warta` command caps them at start (`app.cli.main`), before any thread allocates.
glibc gives a thread that allocates while another holds the main arena an arena of its
own, up to eight per core, and keeps what is freed in each. The workers sign each chunk
of mail in a thread of asyncio's default pool (up to six threads here), and the MTA
writes its spool from sixteen: in a 20,000-recipient campaign the workers' peak RSS rose
from ~139 to ~150 MB this way (`python -m bench.pipeline_bench --no-postfix`, the same
run with and without `MALLOC_ARENA_MAX=2`), with no change in throughput. Python's own
small objects do not use malloc at all (pymalloc), so two arenas see little contention.
"""

from __future__ import annotations

import ctypes
import os

ARENAS = 2
M_ARENA_MAX = -8  # glibc's malloc.h


def limit_arenas() -> bool:
    """Cap the arenas (unless `MALLOC_ARENA_MAX` already did); False if not glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return True  # glibc read it at start-up: the operator's choice stands
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # not glibc (musl, no libc handle): no cap
        return False
    return bool(mallopt(M_ARENA_MAX, ARENAS))
