"""One bench figure (name, value, unit, target) and the table a bench module prints when run on its
own (`python -m bench.bench_uplink`); `bench/run.py` collects the same figures for the results."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Figure = dict[str, Any]


def figure(name: str, value: float, unit: str, target: str, *, digits: int = 3) -> Figure:
    return {"name": name, "value": round(float(value), digits), "unit": unit, "target": target}


def print_figures(figures: Iterable[Figure]) -> None:
    rows = list(figures)
    width = max((len(f["name"]) for f in rows), default=10)
    for f in rows:
        print(f"{f['name']:<{width}}  {f['value']:>14,}  {f['unit']:<16} {f['target']}")


def run_alone(run: Callable[[Path], list[Figure]]) -> None:
    """What a bench module's `__main__` does: run in a temporary directory, print the table."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        print_figures(run(Path(tmp)))


def cli_peak_rss(*command: str) -> tuple[float, float]:
    """`edge-agent COMMAND` in a process of its own: its wall time (s) and its peak resident memory
    (`ru_maxrss`, MiB: the Python runtime included), what a technician running it on a gateway
    needs free."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL,"
        " stderr=subprocess.DEVNULL, check=True);"
        " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    argv = [sys.executable, "-m", "water_edge.agent.cli", *command]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True)
    return time.perf_counter() - started, int(done.stdout.strip()) / 1024
