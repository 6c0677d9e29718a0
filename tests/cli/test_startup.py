"""What a `warta` process imports before it runs its command.

Every process imports the command line (`app.cli`); only `warta api` and `warta dev` serve
HTTP and only the commands that talk to a person print with rich. A worker or an MTA that
imported uvicorn and rich anyway paid ~90 ms and ~6 MB of RSS at each start for nothing.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

LOADED = "import sys; print(' '.join(sorted(m for m in {mods!r} if m in sys.modules)))"


def _loaded_after(imports: str, modules: tuple[str, ...]) -> set[str]:
    code = f"{imports}; " + LOADED.format(mods=modules)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(result.stdout.split())


@pytest.mark.parametrize("service", ["workers.mta_process", "workers.worker"])
def test_a_worker_or_an_mta_does_not_load_the_http_server(service: str) -> None:
    assert _loaded_after(f"import app.cli, {service}", ("uvicorn", "fastapi")) == set()


def test_the_mta_does_not_load_the_terminal_library() -> None:
    assert _loaded_after("import app.cli, workers.mta_process", ("rich",)) == set()


def test_serving_the_api_loads_it_where_it_is_needed() -> None:
    # The check above is not vacuous: the module that serves does bring uvicorn in.
    assert _loaded_after("import app.api.server", ("uvicorn",)) == {"uvicorn"}
