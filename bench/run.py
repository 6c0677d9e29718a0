"""Run every benchmark in bench/ (modules named *_bench.py with a main()) and print figures."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run the benchmarks one after another; a failing one is reported, the rest still run."""
    sys.path.insert(0, str(ROOT))
    failed = []
    for path in sorted((ROOT / "bench").glob("*_bench.py")):
        name = f"bench.{path.stem}"
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(name).main()
        except Exception as exc:
            failed.append(name)
            print(f"!! {name} failed: {exc}", flush=True)
        print(f"   ({time.perf_counter() - started:.1f} s)\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
