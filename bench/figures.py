"""One bench figure (name, value, unit, target) and the table a bench module prints when run on its
own (`python -m bench.bench_uplink`); `bench/run.py` collects the same figures for the results."""

from __future__ import annotations

import tempfile
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
