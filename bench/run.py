"""`make bench`: runs every benchmark, prints one table and writes bench/results.json.

Benchmarks report figures against their targets; they never pass or fail. A suite that crashes
is reported (and listed under `failed` in results.json) and the others still run; the command then
exits non-zero.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from bench.figures import figure, print_figures

RESULTS = Path(__file__).with_name("results.json")
TABLE = Path(__file__).with_name("results.md")
SUITES = [
    "bench.bench_buffer",
    "bench.bench_uplink",
    "bench.bench_backlog",
    "bench.bench_agent",
    "bench.bench_config_memory",
    "bench.bench_sparkplug",
    "bench.bench_opcua",
    "bench.bench_mbus",
    "bench.bench_wmbus",
    "bench.bench_audio",
    "bench.bench_leak",
    "bench.bench_pump",
    "bench.bench_flow_offline",
    "bench.bench_commands",
    "bench.bench_fleet",
    "bench.bench_machine_sound",
    "bench.bench_update",
]


def _machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def _cpu_jiffies() -> tuple[int, int] | None:
    """(stolen, total) CPU time of the whole machine so far, from /proc/stat; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    counts = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (counts[7], sum(counts)) if len(counts) == 8 else None


def _stolen(before: tuple[int, int] | None) -> list[dict[str, Any]]:
    """The share of the machine's CPU time a hypervisor gave to other guests during a suite: a
    run on a shared VM that is slow for that reason says so in its own results."""
    after = _cpu_jiffies()
    if before is None or after is None or after[1] <= before[1]:
        return []
    pct = 100 * (after[0] - before[0]) / (after[1] - before[1])
    target = "reference (taken by a VM's neighbours; 0 on a Pi)"
    return [figure("machine.cpu_stolen", pct, "% of CPU time", target, digits=2)]


def main(argv: list[str]) -> int:
    wanted = argv or SUITES
    figures: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for name in wanted:
        try:
            module = import_module(name)
        except ModuleNotFoundError:
            print(f"(skipping {name}: not present)")
            continue
        runner: Callable[[Path], list[dict[str, Any]]] = module.run
        suite = name.rsplit(".", 1)[-1]
        print(f"running {name} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            started, jiffies = time.monotonic(), _cpu_jiffies()
            try:
                results = runner(Path(tmp))
            except Exception as exc:  # noqa: BLE001 - one suite's crash must not cost the others' figures
                traceback.print_exc()
                failed[suite] = f"{type(exc).__name__}: {exc}"[:2000]
                results = []  # a crash beside a high steal is the machine's: keep that figure
        for measured in [*results, *_stolen(jiffies)]:
            measured["suite"] = suite
            figures.append(measured)
        outcome = "failed" if suite in failed else "done"
        print(f"  {outcome} in {time.monotonic() - started:.0f} s", flush=True)

    if argv and RESULTS.exists():
        # A subset was run: keep the other suites' last figures, replace those just measured.
        ran = {name.rsplit(".", 1)[-1] for name in wanted}
        previous = json.loads(RESULTS.read_text()).get("figures", [])
        figures = [f for f in previous if f.get("suite") not in ran] + figures
    width = max(len(f["name"]) for f in figures) if figures else 10
    print()
    print(f"{'figure':<{width}}  {'value':>14}  {'unit':<16} target")
    print(f"{'-' * width}  {'-' * 14}  {'-' * 16} ------")
    print_figures(figures)
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": _machine(),
                "figures": figures,
                "failed": failed,
            },
            indent=2,
        )
        + "\n"
    )
    _write_table(figures, failed)
    print(f"\nwritten to {RESULTS} and {TABLE}")
    for suite, error in failed.items():
        print(f"FAILED {suite} (no measurement; rerun: .venv/bin/python -m bench.run bench.{suite}): {error}")
    return 1 if failed else 0


def _write_table(figures: list[dict[str, Any]], failed: dict[str, str]) -> None:
    machine = _machine()
    lines = [
        "# Benchmark results",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `make bench` on "
        f"{machine['cpus']} CPUs, {machine['machine']}, Python {machine['python']}.",
        "Written by bench/run.py; how each figure is measured: docs/benchmarks.md.",
        "",
        "| suite | figure | value | unit | target |",
        "|---|---|---:|---|---|",
    ]
    lines += [
        f"| {f['suite']} | {f['name']} | {f['value']:,} | {f['unit']} | {f['target']} |" for f in figures
    ]
    if failed:  # a reader of the table must see which suites have no figures in it, and why
        lines += ["", "Suites that crashed (no measurement in this run, only `machine.cpu_stolen`):", ""]
        lines += [f"- {suite}: `{(error.splitlines() or [''])[0]}`" for suite, error in failed.items()]
    TABLE.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
