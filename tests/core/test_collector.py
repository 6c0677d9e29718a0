"""The cycle collector of a started service: start-up frozen, cycles still collected."""

from __future__ import annotations

import json
import subprocess
import sys

from app.core.collector import YOUNG_GENERATION

# In a child process: freezing the test process would keep every test's cycles forever.
SERVICE = """
import gc, json, weakref

import app.cli  # the code a service imports before it starts
from app.core import collector

tracked = len(gc.get_objects())
collector.settle_after_start()
frozen, threshold = gc.get_freeze_count(), gc.get_threshold()


class Node:
    pass


cycle = Node()
cycle.me = cycle
gone = weakref.ref(cycle)
del cycle
few = [[] for _ in range(2_000)]  # three young generations at Python's default (700)
survived_few = gone() is not None
many = [[] for _ in range(3 * collector.YOUNG_GENERATION)]
print(json.dumps({"tracked": tracked, "frozen": frozen, "threshold": threshold,
                  "survived_few": survived_few, "collected": gone() is None}))
"""


def test_start_up_is_frozen_and_cycles_are_still_collected() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SERVICE], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(out.stdout)
    assert seen["frozen"] >= seen["tracked"] // 2  # the imported code, out of the walks
    assert seen["threshold"][0] == YOUNG_GENERATION
    assert seen["survived_few"]  # no collection after 2,000 allocations any more
    assert seen["collected"]  # but after a few young generations' worth, the cycle is freed
