"""Is this check a leak? The rise from the sensor's own baseline, judged band by band, then confirmed.

`judge(check, baseline, params)` compares one check with the baseline.

A check (of at least `MIN_SECONDS_DISTURBED`) in which more than `max_unsteady_bands` of the 20
bands wander (`levels.unsteady_bands`: rain, a storm, works in the street) is **disturbed**: not a
quiet window, so it is not judged at all (neither positive nor quiet; confirmation and clearing
wait for a judged check). But a leak does not stop when it rains (`disturbed_confirms`, ninth
pass): with a material, the leak bands the disturbance left steady (within `rain_spread_db` of a
steady noise's spread, not tonal) whose level rose over the baseline's by the level threshold are
counted, and `min_bands` of them make the check positive — which `Confirmation` takes only to
confirm an open warning (or keep a leak up), never to open one (`steady_only` in the judgement) —
except in a plastic pipe, where its leak bands below 45 Hz risen twice their level threshold open
one (`plastic_rain_opens`, eleventh pass, `rained_out.py`: `rain_opens` in the judgement), or
three of them 1.5 x theirs (`plastic_rain_second_bar`, twelfth pass); there a disturbed check
confirms a warning only with a band the warning showed, its neighbour, three bands, or after a
demand-like warning — not with the rain's skirt (`plastic_rain_same_bands`, `rain_confirms.py`).
Only the level counts there: a disturbance is none of the learned nuisance patterns (their fit
breaks) and lifts most bands (no shape), and the classifier hears rain as a leak. Otherwise,
per band (only the leak bands of the pipe material when it is known, else all 20):

- `rise_db`: quiet level (10th percentile of one-second levels) minus the baseline's;
- `shape_rise_db`: the same for the spectral shape (quiet level minus the median band), which a
  change of gain or of broadband background does not move;
- `residual_db`: the rise that none of the sensor's own nuisance patterns explains
  (`nuisance.Nuisance`: how flow noise, traffic, a pump, the floor moved its bands together on
  the baseline nights) — in a metal pipe, where more night flow lifts the very bands a leak
  lifts, this is where a weak leak shows;
- before level and shape are judged, the part of the check that lies along a learned nuisance
  pattern *beyond* the range the baseline's checks spanned (`Nuisance.beyond`, `pattern_db` in
  the evidence: more night demand than on any baseline night) is taken out: the pattern explains
  it, however far it went (up to twice its range's width); `extend_patterns = false` judges
  against the baseline's range only. In a metal pipe how far the check went along the patterns is
  read from the bands outside the leak band (`metal_witness`, seventh pass): there the flow noise
  shows too and a leak does not, so a loud leak, whose band is the flow noise's, does not pass
  for more night demand than the baseline heard;
- risen when any of them exceeds its threshold: level and shape `max(min_rise_db, k_sigma x the
  baseline's variability)` (a level rise only counts where it exceeds the median rise over all
  bands by `min_shape_rise_db`: a louder street lifts every band alike, a leak lifts its own);
  the residual `k_sigma x its leave-one-out spread` (plus `EXTRAPOLATION_TOL` of the part taken
  out along a pattern: a straight line in dB fits less well the further it is extended) and at
  least `min_residual_db`;
  *and* the band is steady (`levels.steady`: a leak is a constant hiss) and not tonal: its
  strongest bin stands no more than `tonal_tol_db` further out of the band than in the baseline
  (a pump that started puts a line into a band; a leak is broadband within it).

A check is positive when at least `min_bands` bands rose, or one band rose and the classifier's
log-odds rose by `clf_logit_rise` over the baseline's: the classifier is one more piece of evidence,
never the gate. In a metal pipe it is also positive when the leak band's residual, summed over its
steady, non-tonal bands and scaled by the sum's spread under the residuals' band-to-band
correlation (`joint.joint_z`), reaches `joint_z` (or `joint_k` x its spread on the baseline's own
checks, if higher), or `JOINT_WITH_CLF` of that with the classifier's rise: a weak leak lifts its
bands 1-2 dB each, below every band's threshold, but together. Plastic pipes are judged band by
band only: there a little more flow noise than the baseline heard lifts the same low band broadly
(dev seeds: leak-free PVC nights reached 8 standard deviations), and baselines written before the
leave-one-out residuals were kept (`nuisance.Nuisance.loo`) have no joint test until recalibrated.
**Metal pipes, judged against the common mode too** (`metal_common_mode`, tenth pass), as plastic
pipes are (below): a booster pump that stops moves the spectrum's median band in a metal pipe as
well (dev site 26102).
**The leak band weighted where a leak shows** (`metal_matched`, tenth pass): in a metal pipe the
same judgement is made of the leak band's residual weighted by what a leak would add to each band
over the sensor's quiet (`matched.py`): the background is loudest at the bottom of a metal pipe's
leak band, so a weak leak shows at its quiet top, and weighing every band alike dilutes it.
**A metal pipe's leak under rain** (`metal_below_rain`, twelfth pass, `under_rain.py`): a
rained-on or disturbed check's leak bands below where the rain reaches are judged as one, the
nuisance patterns refitted on the bands the rain left clean (`below_rain_z` in the judgement);
positive, such a check opens or confirms a warning, and a warning only it opened is confirmed by a
dry positive check or by the same test again.

**Plastic pipes, judged against the common mode** (`plastic_common_mode`, sixth pass; baselines
with nuisance patterns and `relative_sigma`): the shape is a band's rise over the *common-mode
rise* (the median rise over all 20 bands) against `k_sigma` x its variability of that on the
baseline checks (at least `min_rise_db`), not the band level minus the spectrum's median band: a
booster pump switching off drops four or five bands by 20-35 dB and moves the median *band* by up
to 18 dB, so every other band's "shape" rose although none got louder; a leak adds energy to its
bands, which then stand above the common rise. Level and residual are judged as before.
**Rain** (`rain_spread_db`, eighth pass): light rain wanders in too few bands for the disturbed
gate but lifts the top of a metal pipe's leak band like a leak (dev seeds: every metal false alarm
in rain). Rain on the street is broadband and reaches above a pipe's leak band, where a leak heard
along the pipe does not, and it gusts: when the bands above the leak band rose over the common-mode
rise by `min_rise_db` on average *and* their lower half of one-second levels is on average
`rain_spread_db` wider than a steady noise's, the check is judged as rained on (`rain` in the
evidence): a band counts only when its own spread is within `rain_spread_db` of a steady noise's
(not `spread_tol_db`), the joint test is not made, the check adds nothing to the evidence
accumulated over checks and never counts as quiet. A loud leak still stands steady under the rain.
Without a material (every band judged) there is no band above the leak band: no rain rule.
**Plastic pipes, a night of more demand** (`plastic_demand`, tenth pass, `demand.py`): a check
positive only by its leak band's common rise (`demand_db`: the median rise of the non-tonal leak
bands, at most `min_rise_db`) is `demand_like`; it confirms a warning only on a later night.
`Confirmation` turns positive checks into a warning, then a leak (a second
positive later the same night or the next night) — a check also counts as positive when the
sensor's evidence accumulated over checks reaches its level (`accumulate.Accumulation`, metal
pipes; `Confirmation.last` is then a positive copy of the judgement with `accumulated`) — and
clears a leak after `clear_nights` judged nights without a risen band at half the thresholds
(hysteresis).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any, Literal, TypedDict

import numpy as np
import numpy.typing as npt

from water_edge.models.leak import demand, features, pipes, rain_confirms, rained_out, under_rain
from water_edge.models.leak.accumulate import Accumulation
from water_edge.models.leak.baseline import Baseline, CheckStats, relative_rise
from water_edge.models.leak.joint import Joint, joint_z
from water_edge.models.leak.levels import STEADY_LOWER_SPREAD_DB, steady, unsteady_bands
from water_edge.models.leak.matched import leak_template, matched_z

FloatArray = npt.NDArray[np.float64]
CENTRES = features.CENTRES_HZ
# A check shorter than this is always judged: from a handful of one-second levels the 10th and 50th
# percentiles are too uncertain to call a check disturbed (of 8 values the 10th percentile is about
# the lowest), and `score leak` cuts files into 8 s checks. Gateway checks are 30 min long.
MIN_SECONDS_DISTURBED = 30
# The nuisance patterns are straight lines in dB; sources add in power, so the further a check
# lies beyond the baseline's range along a pattern, the less exactly the line fits it: that
# fraction of the extrapolated dB is allowed as residual on top of the learned residual spread.
EXTRAPOLATION_TOL = 0.25
# With the classifier's log-odds risen too (`clf_logit_rise`), this fraction of the joint threshold
# is enough, as one risen band is with it (dev seeds: no warning more on leak-free metal nights).
JOINT_WITH_CLF = 0.75
# A check this far below the sensor's own baseline (median over every band) is a lost signal, not a
# quiet pipe: a leak only adds sound. A cut cable, an unplugged hydrophone, a gain turned down.
# Not judged, so a dead sensor can never read as the changed spectrum of a leak (its bands fall
# unevenly, which the shape test would read as some of them rising). Simulated nights go down to
# 29.4 dB below (66 432 held-out checks: a pump beside the sensor on every baseline night, off
# later; a leak there is still found by its shape, so 20 dB would lose it); real PVC 3-5 dB.
SIGNAL_LOST_DB = 40.0


@dataclass(frozen=True)
class JudgeParams:
    """How a check is judged against the baseline (config `[models.leak.detection]`)."""

    min_rise_db: float = 3.0
    min_shape_rise_db: float = 1.5
    min_residual_db: float = 1.5
    k_sigma: float = 3.0
    min_bands: int = 2
    spread_tol_db: float = 3.0
    max_unsteady_bands: int = 4
    tonal_tol_db: float = 3.0
    clf_logit_rise: float = 1.5
    extend_patterns: bool = True
    joint_z: float = 2.0
    joint_k: float = 3.0
    metal_matched: bool = True
    metal_common_mode: bool = True
    metal_below_rain: bool = True
    plastic_common_mode: bool = True
    metal_witness: bool = True
    rain_spread_db: float = 1.5
    disturbed_confirms: bool = True
    plastic_demand: bool = True
    plastic_rain_opens: bool = True
    plastic_rain_second_bar: bool = True
    plastic_rain_same_bands: bool = True
    material: str | None = None
    diameter_mm: float = 150.0

    def band_mask(self) -> npt.NDArray[np.bool_]:
        """The bands judged: those whose centre lies in the material's leak band (all without one)."""
        if self.material is None:
            return np.ones(features.N_BANDS, dtype=bool)
        lo, hi = pipes.leak_band(self.material, self.diameter_mm)
        mask: npt.NDArray[np.bool_] = (lo <= CENTRES) & (hi >= CENTRES)
        return mask


@dataclass
class Judgement:
    """What one check says, with the evidence an engineer reads."""

    positive: bool
    quiet: bool  # judged, not positive, nothing up even at half its threshold (counts towards clearing)
    risen: list[dict[str, float]]  # per risen band: band_hz, rise/shape/residual dB, threshold_db
    rise_db: dict[str, float]  # every judged band's rise
    clf_logit_rise: float | None
    quiet_db: float  # the check's quiet level over all bands
    score: float  # strongest band's rise over its threshold (>= 1 needed for that band to rise, not enough)
    judged: bool = True  # False: a disturbed check (too many bands wandering), not judged
    unsteady_bands: int = 0
    joint_z: float | None = None  # the leak band's residual judged as one (`joint.py`)
    joint_threshold: float | None = None
    # The leak band weighted by what a leak would add to each band (`matched.py`, metal pipes).
    matched_z: float | None = None
    matched_threshold: float | None = None
    # A metal pipe's rained-on check: its leak bands below the rain's reach judged as one
    # (`under_rain.py`, `metal_below_rain`): the larger statistic and the bar it is held to.
    below_rain_z: float | None = None
    below_rain_threshold: float | None = None
    below_rain: bool = False  # positive by that test
    below_rain_only: bool = False  # ... and by nothing else
    # The joint z standardised by its spread on the baseline's own checks (`accumulate.py` sums it).
    joint_u: float | None = None
    accumulated: dict[str, Any] | None = None  # set when accumulated evidence made the check positive
    rain: bool = False  # rain's signature above the pipe's leak band (`_rain`): judged as rained on
    steady_only: bool = False  # disturbed, judged on its steady bands' levels only (may confirm a warning)
    # A plastic pipe's night of more demand (`demand.py`): how far the leak band rose together, and
    # whether the check is positive only by it (then it does not confirm on its warning's night).
    demand_db: float | None = None
    demand_like: bool = False
    # A plastic pipe's disturbed check whose low leak bands rose enough to open a warning
    # (`rained_out.py`, `plastic_rain_opens`).
    rain_opens: bool = False
    # A plastic pipe's disturbed check that confirms a warning only with the warning's bands
    # (`rain_confirms.py`, `plastic_rain_same_bands`).
    same_bands: bool = False
    # Every band far below the baseline (`SIGNAL_LOST_DB`): the sensor is not heard, not judged.
    signal_lost: bool = False

    def evidence(self) -> dict[str, Any]:
        return {
            "judged": self.judged,
            "signal_lost": self.signal_lost,
            "unsteady_bands": self.unsteady_bands,
            "rain": self.rain,
            "steady_only": self.steady_only,
            "rain_opens": self.rain_opens,
            "bands_risen": self.risen,
            "rise_db": self.rise_db,
            "classifier_logit_rise": None if self.clf_logit_rise is None else round(self.clf_logit_rise, 2),
            "quiet_level_db": round(self.quiet_db, 1),
            "score": round(self.score, 3),
            "joint_z": None if self.joint_z is None else round(self.joint_z, 2),
            "joint_threshold": None if self.joint_threshold is None else round(self.joint_threshold, 2),
            "matched_z": None if self.matched_z is None else round(self.matched_z, 2),
            "matched_threshold": None if self.matched_threshold is None else round(self.matched_threshold, 2),
            "below_rain_z": None if self.below_rain_z is None else round(self.below_rain_z, 2),
            "below_rain_threshold": None
            if self.below_rain_threshold is None
            else round(self.below_rain_threshold, 2),
            "accumulated": self.accumulated,
            "demand_db": None if self.demand_db is None else round(self.demand_db, 1),
            "demand_like": self.demand_like,
        }


def judge(  # noqa: PLR0915 - one check's judgement, read top to bottom
    check: CheckStats, baseline: Baseline, params: JudgeParams | None = None
) -> Judgement:
    p = params or JudgeParams()
    mask = p.band_mask()
    rise = check.p10 - baseline.level
    if check.silent or float(np.median(rise)) <= -SIGNAL_LOST_DB:
        return Judgement(
            positive=False,
            quiet=False,
            risen=[],
            rise_db={f"{CENTRES[i]:g}": round(float(rise[i]), 1) for i in np.flatnonzero(mask)},
            clf_logit_rise=None,
            quiet_db=check.quiet_db,
            score=0.0,
            judged=False,
            signal_lost=True,
        )
    beyond = np.zeros(features.N_BANDS)
    if baseline.nuisance is not None and p.extend_patterns:
        # A nuisance louder (or quieter) than on any baseline night moves the bands along its
        # learned pattern beyond the range the thresholds were learned from: that part is explained.
        beyond = baseline.nuisance.beyond(check.p10, _witness(p, mask))
    unexplained = check.p10 - beyond
    relative = _relative(p, baseline)
    ratio, shape_rise, t_level, t_shape = _level_and_shape(p, baseline, unexplained, relative)
    residual = np.zeros(features.N_BANDS)
    t_residual = np.full(features.N_BANDS, np.inf)
    if baseline.nuisance is not None:
        residual = baseline.nuisance.residual(check.p10)
        t_residual = np.maximum(p.min_residual_db, p.k_sigma * baseline.nuisance.sigma)
        t_residual = t_residual + EXTRAPOLATION_TOL * np.abs(beyond)
        res_ratio = np.where(residual >= p.min_residual_db, residual / t_residual, 0.0)
        ratio = np.maximum(ratio, res_ratio)
    is_steady = steady(check.p10, check.p50, p.spread_tol_db)
    # A line that was not there (a pump started, a mains hum) raises a band without being a leak.
    tonal_ok = np.ones(features.N_BANDS, dtype=bool)
    if check.tonal is not None:
        tonal_ok = check.tonal <= baseline.tonal + p.tonal_tol_db
    unsteady = unsteady_bands(check.p10, check.p50, p.spread_tol_db)
    short = check.seconds < MIN_SECONDS_DISTURBED
    rain = not short and _rain(check, baseline, p, mask)
    judged = unsteady <= p.max_unsteady_bands or short
    # A leak does not stop when it rains: a disturbed check still hears the bands the disturbance
    # left steady, and they may confirm an open warning (`disturbed_confirms`, `Confirmation`).
    steady_only = not judged and p.disturbed_confirms and p.rain_spread_db > 0 and p.material is not None
    if rain or steady_only:
        # Rain gusts in the bands it reaches (the top of the leak band): in rain only a band as
        # steady as a leak's hiss counts, the joint test is not made and nothing is accumulated.
        is_steady = steady(check.p10, check.p50, p.rain_spread_db)
    if steady_only:
        # The level over the baseline's only: a disturbance is none of the sensor's learned patterns
        # (the residuals' fit breaks; dev seeds: leak-free PVC bands in rain 4-16 dB of residual) and
        # lifts most bands (the common-mode rise moves by tens of dB, so no shape either).
        ratio = rise / t_level
    counted = mask & is_steady & tonal_ok
    risen_mask = counted & (ratio >= 1.0) & (judged or steady_only)
    clf_rise = (
        None
        if check.clf_logit is None or baseline.clf_logit is None
        else check.clf_logit - baseline.clf_logit
    )
    n = int(risen_mask.sum())
    clf_up = clf_rise is not None and clf_rise >= p.clf_logit_rise
    # A disturbed check's classifier hears the disturbance (leak-free rain: +10 to +16 log-odds).
    positive = n >= p.min_bands or (n >= 1 and clf_up and not steady_only)
    joint: _Test | None = None
    matched: _Test | None = None
    if (
        baseline.nuisance is not None
        and baseline.nuisance.loo is not None
        and p.joint_z > 0
        and judged
        and not rain
        and _metal(p)
    ):
        extra = EXTRAPOLATION_TOL * np.abs(beyond)
        jo = joint_z(residual, baseline.nuisance.sigma, baseline.nuisance.loo, counted, extra)
        joint = None if jo is None else _Test.of(jo, p)
        if p.metal_matched:
            # Weighted by what a leak would add to each band over the sensor's quiet (`matched.py`).
            template = leak_template(baseline.level, baseline.nuisance.components, mask)
            mo = matched_z(
                residual, baseline.nuisance.sigma, baseline.nuisance.loo, counted, extra, template=template
            )
            matched = None if mo is None else _Test.of(mo, p)
        # Either test, alone or at `JOINT_WITH_CLF` of its threshold with the classifier's rise.
        positive = positive or any(
            t.up(1.0) or (clf_up and t.up(JOINT_WITH_CLF)) for t in (joint, matched) if t
        )
    # A metal pipe's rained-on check: its leak bands below the rain judged as one (`under_rain.py`).
    below = _below_rain(check, baseline, p, mask, residual, counted) if rain or steady_only else None
    below_up = below is not None and below.up(under_rain.RAIN_K)
    below_only = below_up and not positive
    positive = positive or below_up
    threshold = t_level if steady_only else np.minimum(np.minimum(t_level, t_shape), t_residual)
    risen = [
        {
            "band_hz": float(CENTRES[i]),
            "rise_db": round(float(rise[i]), 1),
            "shape_rise_db": round(float(shape_rise[i]), 1),
            "residual_db": round(float(residual[i]), 1),
            "pattern_db": round(float(beyond[i]), 1),
            "threshold_db": round(float(threshold[i]), 1),
        }
        for i in np.flatnonzero(risen_mask)
    ]
    # A leak found by its band together keeps the check from counting towards clearing while the
    # band stays up together (at half the joint threshold, as single bands do at half theirs).
    joint_up = any(t.up(0.5) for t in (joint, matched) if t)
    return Judgement(
        positive=positive,
        quiet=judged
        and not rain
        and not positive
        and not bool((mask & (ratio >= 0.5)).any())
        and not joint_up,
        risen=risen,
        rise_db={f"{CENTRES[i]:g}": round(float(rise[i]), 1) for i in np.flatnonzero(mask)},
        clf_logit_rise=clf_rise,
        quiet_db=check.quiet_db,
        score=float(np.max(np.where(mask, ratio, -np.inf))),
        judged=judged,
        unsteady_bands=unsteady,
        joint_z=None if joint is None else joint.z,
        joint_threshold=None if joint is None else joint.threshold,
        # The accumulated evidence (`accumulate.py`) takes the larger of the two tests' spreads.
        joint_u=max((t.u for t in (joint, matched) if t), default=None),
        matched_z=None if matched is None else matched.z,
        matched_threshold=None if matched is None else matched.threshold,
        below_rain_z=None if below is None else below.z,
        below_rain_threshold=None if below is None else under_rain.RAIN_K * below.threshold,
        below_rain=below_up,
        below_rain_only=below_only,
        rain=rain,
        steady_only=steady_only,
        # In a plastic pipe a leak under rain shows below it: there a disturbed check may open a
        # warning (`rained_out.py`).
        rain_opens=steady_only
        and p.plastic_rain_opens
        and _plastic(p)
        and rained_out.opens(rise, t_level, counted, p.min_bands, second_bar=p.plastic_rain_second_bar),
        # ... and confirms a plastic warning with the warning's bands (`rain_confirms.py`).
        same_bands=steady_only and p.plastic_rain_same_bands and _plastic(p),
        **(
            _demand(
                p,
                baseline,
                level_rise=unexplained - baseline.level,
                rises=(shape_rise, t_level, t_shape, residual, t_residual),
                mask=mask,
                counted=counted,
                tonal_ok=tonal_ok,
                clf_up=clf_up,
                positive=positive,
            )
            # Plastic pipes judged against their common mode only.
            if relative is not None and _plastic(p) and p.plastic_demand and judged and not steady_only
            else _Demand(demand_db=None, demand_like=False)
        ),
    )


@dataclass(frozen=True)
class _Test:
    """A metal pipe's leak band judged as one (`joint.py`, `matched.py`) against the sensor's own
    quiet: the threshold is `joint_z`, or `joint_k` x the statistic's spread on the baseline's
    checks if higher; `u` is the statistic in spreads of that quiet (floored where the absolute
    floor `joint_z` binds), what `accumulate.py` sums."""

    z: float
    threshold: float
    u: float

    @classmethod
    def of(cls, jo: Joint, p: JudgeParams) -> _Test:
        centre = float(np.median(jo.loo))
        spread = 1.4826 * float(np.median(np.abs(jo.loo - centre)))
        u = (jo.z - centre) / max(spread, p.joint_z / p.joint_k if p.joint_k > 0 else 1.0)
        return cls(jo.z, max(p.joint_z, centre + p.joint_k * spread), u)

    def up(self, fraction: float) -> bool:
        return self.z >= fraction * self.threshold


def _below_rain(  # noqa: PLR0917 - the judgement's own intermediate results, in its order
    check: CheckStats,
    baseline: Baseline,
    p: JudgeParams,
    mask: npt.NDArray[np.bool_],
    residual: FloatArray,
    counted: npt.NDArray[np.bool_],
) -> _Test | None:
    """A metal pipe's rained-on check: its leak bands below the rain's reach judged as one, the
    patterns refitted on the bands the rain left clean (`under_rain.py`); the larger of the joint
    and weighted tests (by their margin over threshold), or None."""
    nu = baseline.nuisance
    if not (p.metal_below_rain and _metal(p)) or nu is None or nu.loo is None or p.joint_z <= 0:
        return None
    clean = under_rain.clean_bands(check.p10, check.p50, baseline.level)
    if clean is None:
        return None
    extra = EXTRAPOLATION_TOL * np.abs(nu.beyond(check.p10, ~mask & clean))
    template = leak_template(baseline.level, nu.components, mask) if p.metal_matched else None
    br = under_rain.tests(
        residual, nu.components, nu.loo, use=counted, clean=clean, extra_db=extra, template=template
    )
    if br is None:
        return None
    found = [_Test.of(t, p) for t in (br.joint, br.matched) if t is not None]
    return max(found, key=lambda t: t.z - t.threshold, default=None)


def _rain(check: CheckStats, baseline: Baseline, p: JudgeParams, mask: npt.NDArray[np.bool_]) -> bool:
    """Does the check carry rain's signature above the pipe's leak band (`rain_spread_db`)?

    Rain on the street is broadband and reaches well above a metal pipe's leak band, where a leak's
    noise, attenuated along the pipe, does not (a plastic pipe's even less: its leak band ends at a
    few hundred Hz); and it gusts, so those bands wander. Both at once:
    the bands above the leak band rose over the common-mode rise by `min_rise_db` on average *and*
    their lower half of one-second levels is on average `rain_spread_db` wider than a steady
    noise's. Light rain wanders too little to reach the disturbed gate (`max_unsteady_bands`) but
    lifts the top of the leak band like a leak (dev seeds: every metal false alarm in rain). On the
    dev seeds no dry check carries the signature (leak-free or with a leak up to +5 dB), every metal
    rain check of 24000-24023 does and 95 % of the plastic ones of 23000-23047.
    """
    if p.rain_spread_db <= 0 or p.material is None:
        return False
    above = float(np.max(CENTRES[mask])) < CENTRES
    if not above.any():
        return False
    lifted = float(np.mean(relative_rise(check.p10, baseline.level)[0, above])) >= p.min_rise_db
    spread = check.p50[above] - check.p10[above] - STEADY_LOWER_SPREAD_DB[above]
    return lifted and float(np.mean(spread)) >= p.rain_spread_db


class _Demand(TypedDict):
    """A plastic check's demand plateau and whether it alone made the check positive."""

    demand_db: float | None
    demand_like: bool


def _demand(
    p: JudgeParams,
    baseline: Baseline,
    *,
    level_rise: FloatArray,
    rises: tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray],
    mask: npt.NDArray[np.bool_],
    counted: npt.NDArray[np.bool_],
    tonal_ok: npt.NDArray[np.bool_],
    clf_up: bool,
    positive: bool,
) -> _Demand:
    """A plastic pipe's check against a night of more demand (`plastic_demand`, tenth pass): the
    leak band's demand plateau (`demand.plateau_db`) and whether the check would still be positive
    with every band's rise (level, shape over the common mode, residual) lowered by it. Not: the
    check is demand-like (dev seeds: 3-7 dB plateaus of leak-free high-demand nights, whose two
    or three highest bands cleared their thresholds; a leak's bands stand above the plateau)."""
    shape_rise, t_level, t_shape, residual, t_residual = rises
    bands = demand.plateau_bands(mask, baseline.tonal, tonal_ok, p.tonal_tol_db)
    d = demand.plateau_db(level_rise, bands, p.min_rise_db)
    if d <= 0 or not positive:
        return _Demand(demand_db=d, demand_like=False)
    common = float(np.median(level_rise))
    level = np.where(level_rise - common >= p.min_shape_rise_db, (level_rise - d) / t_level, 0.0)
    shape = (shape_rise - max(d - common, 0.0)) / t_shape
    left = residual - d
    res = np.where(left >= p.min_residual_db, left / t_residual, 0.0)
    n = int((counted & (np.maximum(np.maximum(level, shape), res) >= 1.0)).sum())
    return _Demand(demand_db=d, demand_like=not (n >= p.min_bands or (n >= 1 and clf_up)))


def _level_and_shape(
    p: JudgeParams, baseline: Baseline, unexplained: FloatArray, relative: FloatArray | None
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per band: the larger of the level's and the shape's rise over their thresholds, the shape
    rise, and both thresholds."""
    level_rise = unexplained - baseline.level
    # A rise of the level counts when the spectrum's shape moved with it: a leak lifts its own
    # bands; more flow noise or a louder street lifts them all alike and leaves the shape.
    # "Alike" is measured against the median rise over all 20 bands (the common mode), not against
    # the median band level: a loud leak that lifts most of its bands moves the median *level* a
    # lot, but its own bands still stand above the common rise.
    common = float(np.median(level_rise))
    t_level: FloatArray = np.maximum(p.min_rise_db, p.k_sigma * baseline.level_sigma)
    level_ratio = np.where(level_rise - common >= p.min_shape_rise_db, level_rise / t_level, 0.0)
    if relative is not None:
        # A plastic pipe (or a metal one, `metal_common_mode`): the shape is the band's rise over
        # the common-mode rise, against its own variability of that on the baseline checks (see
        # above): a band that got no louder than the bulk of the spectrum did not rise, whatever
        # the spectrum's median band did.
        shape_rise: FloatArray = level_rise - common
        t_shape: FloatArray = np.maximum(p.min_rise_db, p.k_sigma * relative)
    else:
        shape_rise = (unexplained - float(np.median(unexplained))) - baseline.shape
        t_shape = np.maximum(p.min_rise_db, p.k_sigma * baseline.shape_sigma)
    ratio: FloatArray = np.maximum(level_ratio, shape_rise / t_shape)
    return ratio, shape_rise, t_level, t_shape


def _witness(p: JudgeParams, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_] | None:
    """The bands that tell how far a nuisance pattern went in a metal pipe: those outside its
    leak band (`metal_witness`). In a metal pipe the flow-noise pattern covers the very bands a
    leak lifts, so a loud leak looks like much more flow noise than the baseline heard and the
    range extension explained it away (a steel leak at +5 dB taken for +21 dB of flow noise); more
    night flow lifts the low bands below the leak band too, a leak does not. None: all bands
    (plastic pipes, whose leak band is the flow noise's own low band; no material)."""
    if not p.metal_witness or not _metal(p):
        return None
    out: npt.NDArray[np.bool_] = ~mask
    return out


def _relative(p: JudgeParams, baseline: Baseline) -> FloatArray | None:
    """The bands' variability relative to the common-mode rise when the shape is judged by it: in a
    plastic pipe with `plastic_common_mode` (sixth pass), in a metal one with `metal_common_mode`
    (tenth pass: a booster pump that stops drops its bands and a night of more demand lifts the
    rest, and the spectrum's median *band* moves with neither; dev site 26102, cast iron, alarmed
    four times on pump-off nights with the leak band 3-5 dB "above" a median band that had not
    moved). Needs a baseline that learned the sensor's night-to-night variation (nuisance patterns,
    `relative_sigma`); None: judged as before (switched off, no material, or an older baseline)."""
    if p.material is None or baseline.nuisance is None or baseline.relative_sigma is None:
        return None
    return baseline.relative_sigma if (p.metal_common_mode if _metal(p) else p.plastic_common_mode) else None


def _metal(p: JudgeParams) -> bool:
    return p.material is not None and pipes.material(p.material).metal


def _plastic(p: JudgeParams) -> bool:
    return p.material is not None and not pipes.material(p.material).metal


Transition = Literal["warning", "leak", "cleared", "expired"]


def _next_day(night: str) -> str | None:
    try:
        return (date.fromisoformat(night) + timedelta(days=1)).isoformat()
    except ValueError:
        return None


@dataclass
class Confirmation:
    """Warning -> leak -> cleared for one sensor, one check at a time (see the module docstring)."""

    clear_nights: int = 2
    next_night: bool = False  # confirm only on a later night than the warning's
    state: Literal["quiet", "warning", "leak"] = "quiet"
    since_night: str | None = None  # the night of the first positive of the current episode
    warning_night: str | None = None
    positives: int = 0
    _quiet_nights: int = 0
    _night: str | None = None
    _night_all_quiet: bool = True
    _night_judged: bool = False
    history: list[str] = field(default_factory=list)
    accumulation: Accumulation = field(default_factory=Accumulation)
    last: Judgement | None = None
    # The judgement that opened the warning (as counted): whether a disturbed check opened it
    # (`rained_out.py`), the bands below the rain alone (`under_rain.py`), and its bands
    # (`rain_confirms.py`) decide what may confirm it.
    _opened_by: Judgement | None = None

    def update(self, night: str, j: Judgement) -> Transition | None:
        """Take one check's judgement; `last` is then that judgement as confirmation counted it."""
        out: Transition | None = None
        if night != self._night:
            out = self._night_ended(night)
            self._night, self._night_all_quiet, self._night_judged = night, True, False
        if j.judged:  # a disturbed check says nothing either way
            if self.accumulation.update(night, j.joint_u) and not j.positive:
                # Positive by the evidence of the checks before it (`accumulate.py`); a copy, so
                # the caller's judgement stays what this check alone says.
                j = replace(j, positive=True, quiet=False, accumulated=self.accumulation.evidence())
            self._night_judged = True
            self._night_all_quiet = self._night_all_quiet and j.quiet
        opened = self._opened_by if self.state == "warning" else None
        if (
            j.positive
            and j.steady_only
            and not (j.rain_opens or j.below_rain)
            and (self.state == "quiet" or (opened is not None and opened.steady_only))
        ):
            # A disturbed check's steady bands confirm a warning (or keep a leak up); they open one,
            # and confirm one a disturbed check opened, only in a plastic pipe, low and well risen
            # (`rained_out.py`), or in a metal one by its leak bands below the rain (`under_rain.py`).
            j = replace(j, positive=False)
        if (
            j.positive
            and opened is not None
            and opened.below_rain_only
            and (j.rain or j.steady_only)
            and not j.below_rain
        ):
            # A warning only the bands below the rain opened is confirmed by a dry positive check
            # or by that test again, not by a rained-on check's other evidence.
            j = replace(j, positive=False)
        if (
            j.positive
            and j.same_bands
            and opened is not None
            and not opened.steady_only
            and not rain_confirms.confirms(
                [b["band_hz"] for b in opened.risen],
                [b["band_hz"] for b in j.risen],
                demand_like=opened.demand_like,
            )
        ):
            # A rained-out plastic check confirms with the warning's bands, not the rain's skirt.
            j = replace(j, positive=False)
        self.last = j
        if j.positive:
            self._quiet_nights = 0
            self.positives += 1
            if self.state == "quiet":
                self.state, self.since_night, self.warning_night = "warning", night, night
                self._opened_by = j
                return "warning"
            # A demand-like check (`demand.py`) confirms only on a later night than the warning's:
            # the night's demand lifted both of its checks alike.
            same_night = night == self.warning_night
            if self.state == "warning" and not ((self.next_night or j.demand_like) and same_night):
                self.state = "leak"
                return "leak"
        return out

    def transitions(self, night: str, j: Judgement) -> list[Transition]:
        """`update`, with every transition it made in order: an episode that ended as this night
        began (`cleared`, `expired`) and a `warning` this check then opened are both said, or the
        centre's (or a replay's) warning or leak would stay open."""
        before = self.state
        change = self.update(night, j)
        if change == "warning" and before != "quiet":  # only a reset lets a check open a warning
            return ["expired" if before == "warning" else "cleared", "warning"]
        return [] if change is None else [change]

    def _night_ended(self, new_night: str) -> Transition | None:
        """A new night began: expire an unconfirmed warning, count quiet nights towards clearing."""
        if self._night is None:
            return None
        # Confirmation may come later the same night or the night after, not later.
        if (
            self.state == "warning"
            and self.warning_night is not None
            and new_night not in (self.warning_night, _next_day(self.warning_night))
        ):
            self._reset()
            return "expired"
        if self.state == "leak" and self._night_judged:  # a night with no judged check: no count
            self._quiet_nights = self._quiet_nights + 1 if self._night_all_quiet else 0
            if self._quiet_nights >= self.clear_nights:
                self._reset()
                return "cleared"
        return None

    def _reset(self) -> None:
        self.state, self.since_night, self.warning_night = "quiet", None, None
        self.positives, self._quiet_nights = 0, 0
        self._opened_by = None
        self.accumulation.reset()

    def to_dict(self) -> dict[str, Any]:
        """The episode and the counters a restart needs to go on where this left off: a leak
        raised before is then neither raised again nor left without its clear."""
        opened = self._opened_by
        return {
            "state": self.state,
            "since_night": self.since_night,
            "warning_night": self.warning_night,
            "positives": self.positives,
            "quiet_nights": self._quiet_nights,
            "night": self._night,
            "night_all_quiet": self._night_all_quiet,
            "night_judged": self._night_judged,
            # What of the judgement that opened the warning decides what may confirm it.
            "opened_by": None
            if opened is None
            else {
                "bands_hz": [b["band_hz"] for b in opened.risen],
                "steady_only": opened.steady_only,
                "below_rain_only": opened.below_rain_only,
                "demand_like": opened.demand_like,
            },
            "accumulation": self.accumulation.to_dict(),
        }

    def restore(self, data: dict[str, Any], *, counters: bool = True) -> None:
        """Go on from `to_dict`'s record; `ValueError` (or `KeyError`, `TypeError`) when `data` is
        not one, and then nothing is changed. Without `counters` only the open episode is taken
        (a new baseline: its quiet nights and accumulated evidence are counted against it afresh)."""
        state = data["state"]
        if state not in ("quiet", "warning", "leak"):
            raise ValueError(f"unknown state {state!r}")
        nights = {k: data[k] for k in ("since_night", "warning_night", "night")}
        counts = {k: data[k] for k in ("positives", "quiet_nights")}
        flags = {k: data[k] for k in ("night_all_quiet", "night_judged")}
        if not all(v is None or isinstance(v, str) for v in nights.values()):
            raise ValueError(f"a night is not a date: {nights!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
            raise ValueError(f"a count is not one: {counts!r}")
        if not all(isinstance(v, bool) for v in flags.values()):
            raise ValueError(f"not true or false: {flags!r}")
        if state != "quiet" and nights["since_night"] is None:
            raise ValueError(f"a {state} without the night it began")
        opened = data["opened_by"]
        opened_by = None
        if opened is not None:
            bands = [float(b) for b in opened["bands_hz"]]
            marks = {k: opened[k] for k in ("steady_only", "below_rain_only", "demand_like")}
            if not all(isinstance(v, bool) for v in marks.values()):
                raise ValueError(f"not true or false: {marks!r}")
            risen = [{"band_hz": b} for b in bands]
            opened_by = Judgement(True, False, risen, {}, None, 0.0, 0.0, **marks)
        accumulation = replace(self.accumulation)
        if counters:
            accumulation.restore(data["accumulation"])
        self.state, self.since_night, self.warning_night = (
            state,
            nights["since_night"],
            nights["warning_night"],
        )
        self._night, self._night_all_quiet = nights["night"], flags["night_all_quiet"]
        self._night_judged = flags["night_judged"]
        self._opened_by = opened_by
        self.accumulation = accumulation
        if counters:
            self.positives, self._quiet_nights = counts["positives"], counts["quiet_nights"]


def confirmed(judgements: Sequence[Judgement]) -> bool:
    """For a recording judged as one night: at least two positive checks."""
    return sum(j.positive for j in judgements) >= 2
