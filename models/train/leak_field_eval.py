"""Evaluation of the field leak detector (baseline + judgement + confirmation), `make eval`.

    python -m water_edge.models.train.leak_field_eval [--sites 24] [--nights 120] [--trials 30]
                                                      [--check-s 40] [--update-manifest]
                                                      [--materials M,M,...] [--cache DIR] [--skip-real]

1. **Real recordings** (fixed protocol): the baseline is learned from the first half of the real
   no-leak recording (8 s checks); the second half of it and each of the four leak recordings are
   judged as one night each (8 s checks); a recording "raises a leak" when the confirmation rule
   does (two positive checks). Margins are reported per check: the strongest band's rise over
   its threshold (`score`, >= 1 is a risen band) and the bands that rose.
2. **False alarms** (simulated, held-out seeds `--fa-seed`, 7900+): `--sites` sites (materials in turn), a
   7-night baseline, then `--nights` leak-free nights with the night-to-night variation of
   `fwsim.hydrophone_nights` (traffic, weekends, passing vehicles, pumps, night demand, rain).
   Each night is `--checks` checks of `--check-s` seconds of 8 kHz audio (a real night gives
   2 h; see docs/leak-detection.md for what the shortening does).
3. **Detection** (simulated, held-out seeds `--det-seed`, 10600+): per trial a new site, its 7-night baseline,
   then a leak from night 8 at an SNR from {-15, -10, -5, 0, +5} dB against the site's nominal
   background; detected when the confirmation rule raises `leak` within 2 nights. And, where the
   site has one within a year, a leak at -10, -5 and 0 dB that begins on a dry night of >= 2 dB
   more night demand than every baseline night (`high_demand_start`): the louder flow noise must
   not hide it.
Both confirmation rules are scored on the same judgements: a second positive the same or the next
night (the default) and the next night only (`confirm_next_night = true`).
Needs no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from water_edge.core.wavio import read_wav
from water_edge.models.leak import features
from water_edge.models.leak.baseline import Baseline, CheckStats
from water_edge.models.leak.detector import DEFAULT_MANIFEST, LeakScorer
from water_edge.models.leak.judge import Confirmation, JudgeParams, confirmed, judge
from water_edge.models.leak.levels import second_bands
from water_edge.models.leak.recording import recording_checks
from water_edge.models.train.leak_eval import REAL_DIR
from water_edge.sim.hydrophone_nights import LeakSpec, NightPlan, Site

MATERIALS = ("pvc", "ductile_iron", "pe", "cast_iron", "steel")
DIAMETERS = (100.0, 150.0, 200.0, 300.0)
SNRS = (-15.0, -10.0, -5.0, 0.0, 5.0)
HIGH_DEMAND_SNRS = (-10.0, -5.0, 0.0)
HIGH_DEMAND_SEARCH = 365  # nights after the baseline searched for a night of high demand
BASELINE_NIGHTS = 7
REAL_LEAKS = ("orifice-leak", "gasket-leak", "circumferential-crack", "longitudinal-crack")
# The real test bed: 152.4 mm PVC (the data set's README).
REAL_PARAMS = JudgeParams(material="pvc", diameter_mm=152.4)


def _canon(name: str, folder: Path) -> Any:
    x, rate = read_wav(folder / f"{name}.wav")
    return features.prepare(x, rate)[0]


def real_protocol(scorer: LeakScorer, folder: Path = REAL_DIR) -> dict[str, Any]:
    """Baseline from the first half of no-leak; judge its second half and the four leak files."""
    quiet = _canon("no-leak", folder)
    half = (quiet.size // features.SAMPLE_RATE // 2) * features.SAMPLE_RATE
    base = Baseline.learn(
        recording_checks(quiet[:half], "no-leak[first half]", scorer=scorer), sensor="H1", material="pvc"
    )
    files = [("no-leak[second half]", quiet[half:])] + [(n, _canon(n, folder)) for n in REAL_LEAKS]
    out: dict[str, Any] = {"baseline_seconds": base.seconds, "baseline_checks": base.checks, "files": {}}
    for name, x in files:
        js = [judge(c, base, REAL_PARAMS) for c in recording_checks(x, name, scorer=scorer)]
        out["files"][name] = {
            "leak": confirmed(js),
            "positive_checks": sum(j.positive for j in js),
            "checks": len(js),
            "check_scores": [round(j.score, 2) for j in js],
            "bands_risen_per_check": [[b["band_hz"] for b in j.risen] for j in js],
            "classifier_logit_rise": [
                None if j.clf_logit_rise is None else round(j.clf_logit_rise, 2) for j in js
            ],
        }
    f = out["files"]
    out["quiet_half_raises_no_leak"] = not f["no-leak[second half]"]["leak"]
    out["leaks_raised"] = [n for n in REAL_LEAKS if f[n]["leak"]]
    return out


# Where rendered nights' check statistics are kept between runs (`--cache`): judging is cheap,
# rendering and listening are not, so a change of the judgement is re-measured in seconds.
CACHE: dict[str, Path | None] = {"dir": None}


def _cache_file(plan: NightPlan, i: int, checks: int, seconds: float, leak: LeakSpec | None) -> Path | None:
    folder = CACHE["dir"]
    if folder is None:
        return None
    s = plan.site
    key = f"{s.material}-{s.diameter_mm:g}-{s.seed}-{i}-{checks}x{seconds:g}"
    if leak is not None:
        key += f"-leak{leak.start_night}_{leak.snr_db:g}_{leak.position_m:.3f}_{leak.size:.4f}"
        key += f"_{leak.growth_db_per_night:g}"
    return folder / f"{key}.json"


def night_checks(
    plan: NightPlan, i: int, scorer: LeakScorer, *, checks: int, seconds: float, leak: LeakSpec | None = None
) -> list[CheckStats]:
    """One simulated night as the gateway would summarise it (first sensor)."""
    cached = _cache_file(plan, i, checks, seconds, leak)
    if cached is not None and cached.is_file():
        return [CheckStats.from_dict(d) for d in json.loads(cached.read_text(encoding="utf-8"))]
    out = _listen(plan, i, scorer, checks=checks, seconds=seconds, leak=leak)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps([c.to_dict() for c in out]), encoding="utf-8")
    return out


def _listen(
    plan: NightPlan, i: int, scorer: LeakScorer, *, checks: int, seconds: float, leak: LeakSpec | None
) -> list[CheckStats]:
    night = plan.night(i).date.isoformat()
    out = []
    for c, audio in enumerate(plan.render_night(i, checks=checks, seconds=seconds, leak=leak)):
        x = audio[:, 0].astype(np.float64)
        x -= x.mean()
        levels, tonal = second_bands(x)
        # The classifier every 5 s, as the processor runs it.
        probs = scorer.probabilities(features.windows(x, hop_s=5.0))
        out.append(
            CheckStats.from_levels(
                levels, night=night, index=c, probabilities=[float(p) for p in probs], tonality=tonal
            )
        )
    return out


def _site(seed: int, k: int, materials: Sequence[str] = MATERIALS) -> Site:
    return Site(materials[k % len(materials)], DIAMETERS[(k // len(materials)) % len(DIAMETERS)], seed)


def _baseline(plan: NightPlan, scorer: LeakScorer, checks: int, seconds: float) -> Baseline:
    rows = [
        c
        for i in range(BASELINE_NIGHTS)
        for c in night_checks(plan, i, scorer, checks=checks, seconds=seconds)
    ]
    return Baseline.learn(rows, sensor=f"site{plan.site.seed}", material=plan.site.material)


MODES = {"same_or_next_night": False, "next_night_only": True}


def false_alarms(
    scorer: LeakScorer,
    sites: int,
    nights: int,
    checks: int,
    seconds: float,
    *,
    first_seed: int,
    materials: Sequence[str] = MATERIALS,
) -> dict[str, Any]:
    """Leak-free nights after a 7-night baseline, under both confirmation rules (same judgements)."""
    alarms: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    warnings = 0
    per_material: dict[str, int] = {}
    for k in range(sites):
        plan = NightPlan(_site(first_seed + k, k, materials))
        base = _baseline(plan, scorer, checks, seconds)
        params = JudgeParams(material=plan.site.material, diameter_mm=plan.site.diameter_mm)
        confs = {m: Confirmation(next_night=nn) for m, nn in MODES.items()}
        per_material[plan.site.material] = per_material.get(plan.site.material, 0) + nights
        for i in range(BASELINE_NIGHTS, BASELINE_NIGHTS + nights):
            for c in night_checks(plan, i, scorer, checks=checks, seconds=seconds):
                j = judge(c, base, params)
                for mode, conf in confs.items():
                    change = conf.update(c.night, j)
                    warnings += mode == "same_or_next_night" and change == "warning"
                    if change == "leak":
                        cond = plan.night(i)
                        alarms[mode].append(
                            {
                                "site": plan.site.seed,
                                "material": plan.site.material,
                                "night": cond.date.isoformat(),
                                "rain_db": None if cond.rain_db is None else round(cond.rain_db, 1),
                                "pump_on": cond.pump_on,
                                "flow_db": round(cond.flow_db, 1),
                                "bands": [b["band_hz"] for b in j.risen],
                            }
                        )
    years = max(sites * nights, 1) / 365.0
    from scipy.stats import chi2

    out: dict[str, Any] = {
        "sites": sites,
        "first_seed": first_seed,
        "nights": sites * nights,
        "sensor_years": round(years, 2),
        "warnings": warnings,
        "nights_per_material": per_material,
    }
    for mode, found in alarms.items():
        n = len(found)
        # One-sided 95 % upper bound of a Poisson rate with n events (chi-square / 2).
        upper = float(chi2.ppf(0.95, 2 * (n + 1)) / 2) / years
        out[mode] = {
            "false_alarms": n,
            "per_sensor_year": round(n / years, 3),
            "upper_95_per_sensor_year": round(upper, 3),
            "alarms": found,
        }
    return out


def detection(
    scorer: LeakScorer,
    trials: int,
    checks: int,
    seconds: float,
    *,
    first_seed: int,
    materials: Sequence[str] = MATERIALS,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    high: list[dict[str, Any]] = []  # leaks that begin on a night of more demand than the baseline's
    for k in range(trials):
        site = _site(first_seed + k, k, materials)
        plan = NightPlan(site)
        base = _baseline(plan, scorer, checks, seconds)
        params = JudgeParams(material=site.material, diameter_mm=site.diameter_mm)
        rng = np.random.default_rng(np.random.SeedSequence([site.seed, 3]))
        for snr in SNRS:
            leak = LeakSpec(
                BASELINE_NIGHTS,
                snr,
                position_m=float(rng.uniform(10, 90)),
                size=float(math.exp(rng.uniform(math.log(0.3), math.log(3.0)))),
            )
            judged = [
                (c.night, i - BASELINE_NIGHTS + 1, judge(c, base, params))
                for i in (BASELINE_NIGHTS, BASELINE_NIGHTS + 1)
                for c in night_checks(plan, i, scorer, checks=checks, seconds=seconds, leak=leak)
            ]
            rows.append(_detected(judged, {"site": site.seed, "material": site.material, "snr_db": snr}))
        start = _high_demand_night(plan)
        if start is None:
            continue
        rng = np.random.default_rng(np.random.SeedSequence([site.seed, 5]))
        for snr in HIGH_DEMAND_SNRS:
            leak = LeakSpec(
                start, snr, position_m=float(rng.uniform(10, 90)), size=float(rng.uniform(0.5, 2.0))
            )
            judged = [
                (c.night, i - start + 1, judge(c, base, params))
                for i in (start, start + 1)
                for c in night_checks(plan, i, scorer, checks=checks, seconds=seconds, leak=leak)
            ]
            meta = {
                "site": site.seed,
                "material": site.material,
                "snr_db": snr,
                "high_demand": True,
                "night": start,
            }
            high.append(_detected(judged, meta))

    def rate(sel: list[dict[str, Any]], mode: str) -> dict[str, Any]:
        hit = [r for r in sel if r[mode] is not None]
        return {
            "n": len(sel),
            "detected_within_2_nights": round(len(hit) / max(len(sel), 1), 3),
            "on_first_night": round(sum(r[mode] == 1 for r in hit) / max(len(sel), 1), 3),
            # Missed with at most one check judged in the two nights (rain, works): no rule could.
            "missed_unjudged": sum(r[mode] is None and r["judged_checks"] <= 1 for r in sel),
        }

    out: dict[str, Any] = {"trials": trials, "first_seed": first_seed}
    for mode in MODES:
        out[mode] = {
            "by_snr": {f"{s:+.0f} dB": rate([r for r in rows if r["snr_db"] == s], mode) for s in SNRS},
            "snr_ge_minus_10_by_material": {
                m: rate([r for r in rows if r["material"] == m and r["snr_db"] >= -10], mode)
                for m in MATERIALS
            },
            "snr_ge_minus_10": rate([r for r in rows if r["snr_db"] >= -10], mode),
            "missed_snr_ge_minus_10": [
                {k: r[k] for k in ("site", "material", "snr_db", "judged_checks")}
                for r in rows
                if r["snr_db"] >= -10 and r[mode] is None
            ],
            "high_demand_start": {
                "by_snr": {
                    f"{s:+.0f} dB": rate([r for r in high if r["snr_db"] == s], mode)
                    for s in HIGH_DEMAND_SNRS
                },
                "all": rate(high, mode),
            },
        }
    return out


def _detected(judged: list[tuple[str, int, Any]], row: dict[str, Any]) -> dict[str, Any]:
    """The night (1 or 2) each confirmation rule raised `leak` on, or None; and how many of the
    checks were judged (a leak under two nights of rain cannot be found within them)."""
    row["judged_checks"] = sum(j.judged for _, _, j in judged)
    for mode, next_night in MODES.items():
        conf = Confirmation(next_night=next_night)
        row[mode] = next((n for night, n, j in judged if conf.update(night, j) == "leak"), None)
    return row


def _high_demand_night(plan: NightPlan) -> int | None:
    """The first dry night after the baseline with night demand (flow noise) >= 2 dB above every
    baseline night's: a leak that begins then must be found although the flow noise is louder than
    the baseline ever heard (the case the nuisance patterns' extension must not swallow)."""
    most = max(plan.night(i).flow_db for i in range(BASELINE_NIGHTS))
    for i in range(BASELINE_NIGHTS, BASELINE_NIGHTS + HIGH_DEMAND_SEARCH):
        n = plan.night(i)
        if n.flow_db >= most + 2.0 and n.rain_db is None:
            return i
    return None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m water_edge.models.train.leak_field_eval", description=__doc__
    )
    ap.add_argument("--sites", type=int, default=24)
    ap.add_argument("--nights", type=int, default=120)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--checks", type=int, default=2)
    ap.add_argument("--check-s", type=float, default=40.0)
    ap.add_argument("--skip-sim", action="store_true", help="the real-recording protocol only")
    ap.add_argument(
        "--skip-real",
        action="store_true",
        help="simulated nights only (dev runs: the real files are not looked at)",
    )
    # Held-out seeds, each set run once with the defaults of its time (docs/leak-detection.md logs
    # every look): 5000/9000 the first detector, 6000/9500 the second, 6100/9600 the third,
    # 7000/9700 the fourth (the range extension of the nuisance patterns), 7100/9800 the fifth (the
    # joint test of a metal pipe's leak band), 7200/9900 the sixth (evidence accumulated over
    # checks, `models/leak/accumulate.py`), 7300/10000 the seventh (plastic pipes judged against the
    # common-mode rise), 7400/10100 the next (metal pipes: how far a nuisance went read outside
    # the leak band), 7500/10200 the next (rain read above the leak band), 7600/10300 the next (a
    # disturbed check's steady bands confirm a warning), 7700/10400 the tenth pass (metal pipes'
    # weighted leak band and common mode, plastic pipes' night of more demand), 7800/10500 the
    # eleventh (a rained-out plastic check may open a warning), 7900/10600 the twelfth (metal pipes'
    # leak bands below the rain, plastic pipes' second rain bar and same-band confirmation). Dev
    # sets: 100-109,
    # 200-319, 20000-20023
    # (--materials pvc,pe,pvc,pe,ductile_iron,pvc,pe,cast_iron,steel), 21000-21029, 22000-22011
    # and 22100-22129 (--materials ductile_iron,cast_iron,steel), 23000-23047 and 23100-23129
    # (--materials pvc,pe), 24000-24023 (--materials steel,cast_iron,ductile_iron) and 24100-24159
    # (--materials steel,cast_iron); 25000+ with the simulator's rain on half the nights (a script,
    # docs/leak-detection.md, eighth pass).
    # Tenth pass (metal): 26000-26059 detection and 26100-26115 false alarms
    # (--materials steel,steel,cast_iron,ductile_iron); (plastic): 27000-27099 detection and
    # 27100-27147 false alarms (--materials pe,pvc). Eleventh pass (plastic under rain):
    # 28000-28099 detection and 28100-28199 false alarms (--materials pvc,pe) with rain on 60 % of
    # the nights after the baseline (a dev script, docs/leak-detection.md, eleventh pass). Twelfth
    # pass, the same way: plastic 29000-29099, 29500-29559 detection and 29100-29199, 29600-29749
    # false alarms; metal 29200-29299 detection and 29300-29399 false alarms.
    ap.add_argument("--fa-seed", type=int, default=7900)
    ap.add_argument("--det-seed", type=int, default=10600)
    ap.add_argument(
        "--materials",
        default=",".join(MATERIALS),
        help="pipe materials the sites cycle through (a dev set may repeat one: pvc,pe,pvc,pe,steel)",
    )
    ap.add_argument("--cache", type=Path, help="keep rendered nights' check statistics here, reuse them")
    ap.add_argument("--update-manifest", action="store_true", help="write the figures into the leak manifest")
    args = ap.parse_args(argv)
    materials = [m.strip() for m in args.materials.split(",") if m.strip()]
    CACHE["dir"] = args.cache
    from water_edge.core import logs

    logs.configure("warning", json=False)
    scorer = LeakScorer()
    t0 = time.process_time()
    report: dict[str, Any] = {}
    if REAL_DIR.is_dir() and not args.skip_real:
        report["real_recordings"] = real_protocol(scorer)
    if not args.skip_sim:
        report["simulated_false_alarms"] = false_alarms(
            scorer,
            args.sites,
            args.nights,
            args.checks,
            args.check_s,
            first_seed=args.fa_seed,
            materials=materials,
        )
        report["simulated_detection"] = detection(
            scorer, args.trials, args.checks, args.check_s, first_seed=args.det_seed, materials=materials
        )
        report["simulation"] = {"checks_per_night": args.checks, "check_s": args.check_s}
    report["cpu_s"] = round(time.process_time() - t0, 1)
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    if args.update_manifest:
        m = json.loads(DEFAULT_MANIFEST.read_text(encoding="utf-8"))
        m.setdefault("metrics", {})["field_detector"] = report
        DEFAULT_MANIFEST.write_text(json.dumps(m, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
