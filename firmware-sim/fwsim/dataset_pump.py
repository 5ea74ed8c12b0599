"""Labelled pump data: one pump's PLC features at 1 s, for normal operation and each fault kind.

    edge-sim dataset pump --out DIR [--seed N] [--hours H] [--fault KIND ...] [--pump P]

Per run (`normal`, then one per fault) it writes `pump_<run>.csv` (`timestamp` then the
features, nothing else, so a tool expecting `timestamp,features...` loads it as is) and
`pump_<run>.labels.csv` (`timestamp,label,severity`, row for row), plus `manifest.json` (columns,
units, runs, onsets, seed). A fault run is healthy for its first third, ramps to the fault's
severity over the second third and holds it for the last; `label` is the fault kind once its
severity is above zero, else `normal`. The values are what the PLC reports (sensor faults act
there), simulated faster than real time. Column meanings: docs/scenarios.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from water_edge.sim.pumpstation import PumpStation
from water_edge.sim.registers import POINTS, Point

# (column, register-map point suffix, unit)
FEATURES: Final[tuple[tuple[str, str, str], ...]] = (
    ("motor_current", "motor_current", "A"),
    ("voltage", "voltage", "V"),
    ("suction_pressure", "suction_pressure", "bar"),
    ("discharge_pressure", "discharge_pressure", "bar"),
    ("flow", "flow", "m3/h"),
    ("vibration_x", "vibration_x", "mm/s"),
    ("vibration_y", "vibration_y", "mm/s"),
    ("winding_temp", "winding_temp", "degC"),
    ("bearing_temp", "bearing_temp", "degC"),
    ("speed", "speed", "rpm"),
)


@dataclass(frozen=True, slots=True)
class FaultRecipe:
    """How a dataset run injects one fault kind on the chosen pump."""

    kind: str  # what `PumpStation.inject` takes
    severity: float
    tag: str = ""  # sensor faults: the feature (column) they corrupt
    pump_fault: bool = True


RECIPES: Final[dict[str, FaultRecipe]] = {
    "bearing_wear": FaultRecipe("bearing_wear", 1.0),
    "cavitation": FaultRecipe("cavitation", 1.0),
    "imbalance": FaultRecipe("imbalance", 1.0),
    "inlet_valve": FaultRecipe("inlet_valve", 0.8),
    "outlet_valve": FaultRecipe("outlet_valve", 0.8),
    "leak": FaultRecipe("leak", 40.0, pump_fault=False),
    "supply_sag": FaultRecipe("supply_sag", 0.1, pump_fault=False),
    "sensor_drift": FaultRecipe("sensor_drift", 1.0, tag="discharge_pressure"),
    "sensor_stuck": FaultRecipe("sensor_stuck", 1.0, tag="flow"),
    "sensor_dropout": FaultRecipe("sensor_dropout", 1.0, tag="motor_current"),
}
EPOCH: Final = datetime(2024, 1, 1, tzinfo=UTC)  # fixed, so a seed gives byte-identical files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="directory to write into (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hours", type=float, default=24.0, help="model hours per run (default 24)")
    parser.add_argument(
        "--fault",
        action="append",
        choices=sorted(RECIPES),
        default=None,
        metavar="KIND",
        help=f"fault runs to write (repeatable; default all: {', '.join(RECIPES)})",
    )
    parser.add_argument(
        "--pump", type=int, default=1, choices=(1, 2, 3), help="pump whose features are written"
    )
    parser.add_argument("--start-time", default="00:00", help="model time of day at the start (HH:MM)")
    parser.add_argument("--no-normal", action="store_true", help="skip the fault-free run")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.hours <= 24 * 31:
        print("edge-sim dataset pump: --hours must be in (0, 744]", file=sys.stderr)  # noqa: T201 - CLI
        return 2
    try:
        hh, mm = (int(x) for x in str(args.start_time).split(":"))
        if not (0 <= hh < 24 and 0 <= mm < 60):
            raise ValueError
    except ValueError:
        print(f"edge-sim dataset pump: --start-time wants HH:MM, got {args.start_time!r}", file=sys.stderr)  # noqa: T201 - CLI
        return 2
    runs = ([] if args.no_normal else ["normal"]) + list(dict.fromkeys(args.fault or RECIPES))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        manifest = write_dataset(
            args.out, runs, seed=args.seed, hours=args.hours, pump=args.pump, start_s=hh * 3600 + mm * 60
        )
    except OSError as exc:
        print(f"edge-sim dataset pump: {args.out}: {exc.strerror or exc}", file=sys.stderr)  # noqa: T201 - CLI
        return 1
    for entry in manifest["runs"]:
        print(f"{entry['features']}  {entry['rows']} rows  {entry['label']}")  # noqa: T201 - CLI
    return 0


def write_dataset(
    out: Path, runs: list[str], *, seed: int, hours: float, pump: int, start_s: float
) -> dict[str, Any]:
    """Write every run and the manifest; returns the manifest."""
    n_rows = max(3, round(hours * 3600))
    entries = []
    for i, name in enumerate(runs):
        # Progress on stderr, a line per run (stdout keeps the summary scripts read).
        sys.stderr.write(f"edge-sim dataset pump: run {i + 1}/{len(runs)} {name}, {n_rows:,} rows ...")
        sys.stderr.flush()
        started = time.perf_counter()
        entry = _write_run(out, name, seed=seed + i * 1000, rows=n_rows, pump=pump, start_s=start_s)
        entry["wall_s"] = round(time.perf_counter() - started, 3)
        sys.stderr.write(f" {entry['wall_s']:.1f} s\n")
        entries.append(entry)
    manifest = {
        "kind": "pump",
        "seed": seed,
        "pump": pump,
        "resolution_s": 1,
        "columns": [{"name": "timestamp", "unit": "ISO 8601 UTC"}]
        + [{"name": c, "unit": u} for c, _, u in FEATURES],
        "label_columns": ["timestamp", "label", "severity"],
        "runs": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _write_run(out: Path, name: str, *, seed: int, rows: int, pump: int, start_s: float) -> dict[str, Any]:
    station = PumpStation(seed, tick_s=1.0, start_time_of_day_s=start_s)
    by_name = {p.name: p for p in POINTS}
    points: list[Point] = [by_name[f"pump{pump}.{suffix}"] for _, suffix, _ in FEATURES]
    onset = ramp = 0.0
    recipe = RECIPES.get(name)
    if recipe is not None:
        onset, ramp = float(rows // 3), float(rows // 3)
        station.inject(
            recipe.kind,
            pump=pump if recipe.pump_fault and not recipe.tag else None,
            tag=f"pump{pump}.{recipe.tag}" if recipe.tag else None,
            severity=recipe.severity,
            at_s=onset,
            ramp_s=ramp,
        )
    features_path = out / f"pump_{name}.csv"
    labels_path = out / f"pump_{name}.labels.csv"
    t0 = EPOCH + timedelta(seconds=start_s)
    with (
        features_path.open("w", newline="", encoding="utf-8") as ff,
        labels_path.open("w", newline="", encoding="utf-8") as lf,
    ):
        fw, lw = csv.writer(ff), csv.writer(lf)
        fw.writerow(["timestamp", *(c for c, _, _ in FEATURES)])
        lw.writerow(["timestamp", "label", "severity"])
        for row in range(rows):
            state = station.step()
            stamp = (t0 + timedelta(seconds=row + 1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            fw.writerow([stamp, *(_fmt(p.value(state)) for p in points)])
            severity = _severity(station, recipe, pump, state.elapsed_s)
            label = recipe.kind if recipe is not None and severity > 0 else "normal"
            lw.writerow([stamp, label, f"{severity:.4g}"])
    return {
        "label": name,
        "features": features_path.name,
        "labels": labels_path.name,
        "rows": rows,
        "fault_onset_s": onset if recipe else None,
        "fault_ramp_s": ramp if recipe else None,
        "fault_severity": recipe.severity if recipe else None,
        "fault_tag": recipe.tag or None if recipe else None,
    }


def _severity(station: PumpStation, recipe: FaultRecipe | None, pump: int, t: float) -> float:
    if recipe is None:
        return 0.0
    if recipe.tag:
        fault = station.state.sensors.faults[0]
        return fault.ramp.at(t) if fault.ramp.active(t) else 0.0
    return station.severity(recipe.kind, pump if recipe.pump_fault else None)


def _fmt(value: float | int | bool | str) -> str:
    number = float(value)
    return "nan" if math.isnan(number) else f"{number:.4f}"
