"""`edge-agent` and `edge-sim` run numpy on one BLAS thread unless the environment sets a count.

Each case runs in a fresh interpreter: the count is read once, when numpy's BLAS loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from water_edge.core.blas_threads import BLAS_THREAD_VARIABLES, prefer_one_blas_thread

ROOT = Path(__file__).resolve().parents[1]

# Runs a console script's main the way its entry point does, then loads numpy and says how many
# threads its BLAS has (threadpoolctl reads them from the loaded libraries).
PROBE = """
import json, sys
from importlib import import_module
module, argv = sys.argv[1], sys.argv[2:]
sys.argv = [module, *argv]
try:
    import_module(module).main()
except SystemExit:
    pass
import numpy, threadpoolctl
blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
print(json.dumps(blas))
"""


def _blas_threads_after(module: str, argv: list[str], **env: str) -> list[int]:
    clean = {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module, *argv],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    counts: list[int] = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts, "numpy loaded no BLAS threadpoolctl could see"
    return counts


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("water_edge.agent.entry", ["check-config", "-c", "/nonexistent/agent.toml"]),
        ("water_edge.sim.cli", ["list"]),
    ],
)
def test_the_console_scripts_load_numpy_with_one_blas_thread(module: str, argv: list[str]) -> None:
    assert set(_blas_threads_after(module, argv)) == {1}


def test_a_count_the_environment_sets_is_kept() -> None:
    argv = ["check-config", "-c", "/nonexistent/agent.toml"]
    wanted = min(2, len(os.sched_getaffinity(0)))  # OpenBLAS takes no more threads than CPUs
    assert set(_blas_threads_after("water_edge.agent.entry", argv, OPENBLAS_NUM_THREADS="2")) == {wanted}


def test_prefer_one_blas_thread_sets_only_what_is_missing() -> None:
    environ = {"OMP_NUM_THREADS": "4"}
    prefer_one_blas_thread(environ)
    assert environ == {"OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
