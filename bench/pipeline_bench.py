"""End to end through the embedded MTA: the campaign benchmark with `--mta`.

Workers render and submit to `warta mta`, which spools, signs with DKIM and delivers to a
sink; the figure counts until the MTA has reported every message delivered to the ledger.

    python -m bench.pipeline_bench --recipients 100000
"""

from __future__ import annotations

import sys

from bench import campaign_bench


def main(argv: list[str] | None = None) -> None:
    """The campaign benchmark, through the MTA."""
    campaign_bench.main([*(argv or []), "--mta"])


if __name__ == "__main__":
    main(sys.argv[1:])
