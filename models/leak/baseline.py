"""A hydrophone's own quiet: per-check band statistics and the baseline learned from quiet nights.

A *check* is a stretch of one night's listening window (default 30 min, ~1800 one-second band
levels; for a WAV file, a few seconds): `CheckStats.from_levels` keeps, per band, the 10th
percentile of the one-second levels (the quiet level: traffic and water use drop out of it), the
median and the 90th percentile (their spread), the median tonality (a pump's line in the band) and
the classifier's median log-odds.

`Baseline.learn` turns the checks of N quiet nights into the sensor's reference: per band the
median quiet level and its variability across checks and nights, the same for the spectral shape
(quiet level minus the median over bands: a change of gain or of broadband background moves every
band and cancels there), the usual spread, and the classifier's usual log-odds. Variability is
robust (1.4826 x MAD) and shrunk towards a prior (`nuisance.residual_sigma`: 1 dB, worth 3
checks), so a baseline from one night or one short file does not promise a precision it has not
seen. Each band's *relative* variability is kept too: how far its rise stood from the check's
common-mode rise (the median rise over all bands) on the baseline checks — what a plastic pipe's
bands are judged by (`judge.py`). Serialised as JSON (`to_dict` / `from_dict`) and versioned by
`models.leak.store`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from water_edge.models.leak import features, pipes
from water_edge.models.leak.levels import unsteady_bands
from water_edge.models.leak.nuisance import PRIOR_SIGMA_DB, Nuisance, residual_sigma

FORMAT: Final = "water-edge-leak-baseline/1"
LOGIT_CLIP: Final = 12.0

FloatArray = npt.NDArray[np.float64]


DIGITAL_SILENCE_DB = -150.0  # median band level of a check with no signal (see `CheckStats.silent`)


class BaselineError(ValueError):
    """A baseline cannot be learned or read; the message says why."""


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return max(-LOGIT_CLIP, min(LOGIT_CLIP, math.log(p / (1 - p))))


def _r(values: FloatArray, nd: int = 2) -> list[float]:
    return [round(float(v), nd) for v in values]


@dataclass
class CheckStats:
    """One check's band statistics (dB re full scale; 20 bands, `features.band_centres_hz()`)."""

    night: str  # local date the night window began on (ISO), or a file name
    index: int  # check number within the night
    start_ns: int
    seconds: int
    p10: FloatArray
    p50: FloatArray
    p90: FloatArray
    clf_logit: float | None = None  # median classifier log-odds over the check's windows
    tonal: FloatArray | None = None  # median band tonality (dB, `levels.second_bands`)
    # Seconds the audio driver saw saturated at full scale: judged (a leak may be that loud), never
    # learnt from (every band of a clipped second is distorted).
    saturated_s: int = 0
    sample_rate: int | None = None  # of the audio as captured or recorded; None: not known

    @classmethod
    def from_levels(
        cls,
        levels: FloatArray,
        *,
        night: str,
        index: int = 0,
        start_ns: int = 0,
        probabilities: Sequence[float] = (),
        tonality: FloatArray | None = None,
        saturated_s: int = 0,
        sample_rate: int | None = None,
    ) -> CheckStats:
        if levels.ndim != 2 or levels.shape[1] != features.N_BANDS or levels.shape[0] < 1:
            raise BaselineError(f"need one-second band levels shaped (n, {features.N_BANDS})")
        p10, p50, p90 = np.percentile(levels, [10, 50, 90], axis=0)
        clf = float(np.median([logit(p) for p in probabilities])) if len(probabilities) else None
        tonal = None if tonality is None or tonality.shape[0] == 0 else np.median(tonality, axis=0)
        seconds = int(levels.shape[0])
        return cls(night, index, start_ns, seconds, p10, p50, p90, clf, tonal, saturated_s, sample_rate)

    @property
    def spread(self) -> FloatArray:
        out: FloatArray = self.p90 - self.p10
        return out

    @property
    def shape(self) -> FloatArray:
        """Quiet level of each band relative to the median band: the spectrum's shape, gain-free."""
        out: FloatArray = self.p10 - float(np.median(self.p10))
        return out

    @property
    def silent(self) -> bool:
        """Digital silence: no signal at all (a disconnected input, an ADC sending zeros). Below
        a 24-bit converter's own noise (-146 dBFS), so no hydrophone, however quiet its pipe."""
        return float(np.median(self.p50)) <= DIGITAL_SILENCE_DB

    @property
    def quiet_db(self) -> float:
        """All bands' quiet levels together (power sum): the night-minimum figure loggers report."""
        return float(10 * np.log10(np.sum(10 ** (self.p10 / 10))))

    def to_dict(self) -> dict[str, Any]:
        return (
            {
                "night": self.night,
                "index": self.index,
                "start_ns": self.start_ns,
                "seconds": self.seconds,
                "p10": _r(self.p10),
                "p50": _r(self.p50),
                "p90": _r(self.p90),
                "clf_logit": None if self.clf_logit is None else round(self.clf_logit, 3),
                "tonal": None if self.tonal is None else _r(self.tonal),
            }
            | ({"saturated_s": self.saturated_s} if self.saturated_s else {})
            | ({} if self.sample_rate is None else {"sample_rate": self.sample_rate})
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckStats:
        try:
            arrays = [np.asarray(d[k], dtype=np.float64) for k in ("p10", "p50", "p90")]
            if any(a.shape != (features.N_BANDS,) for a in arrays):
                raise BaselineError(f"band statistics must have {features.N_BANDS} values")
            clf = d.get("clf_logit")
            tonal = d.get("tonal")
            return cls(
                str(d["night"]),
                int(d["index"]),
                int(d["start_ns"]),
                int(d["seconds"]),
                arrays[0],
                arrays[1],
                arrays[2],
                None if clf is None else float(clf),
                None if tonal is None else _bands(tonal),
                int(d.get("saturated_s", 0)),
                _rate(d.get("sample_rate"), "sample_rate"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BaselineError(f"not a check record: {exc}") from exc


def _bands(values: Any) -> FloatArray:
    out = np.asarray(values, dtype=np.float64)
    if out.shape != (features.N_BANDS,) or not np.all(np.isfinite(out)):
        raise BaselineError(f"band arrays must hold {features.N_BANDS} finite numbers")
    return out


def _mixed(rates: set[int | None]) -> tuple[int, ...]:
    """The known rates of a baseline's checks when there are several (checks stored before rates
    were kept say none)."""
    known = tuple(sorted(r for r in rates if r is not None))
    return known if len(known) > 1 else ()


def _rate(value: Any, key: str) -> int | None:
    """A stored sample rate: a whole number of Hz, or None (not known; absent in older records)."""
    if value is not None and (type(value) is not int or not 0 < value <= 10**6):
        raise BaselineError(f"{key!r} must be a rate in Hz or null, got {value!r}")
    return value


def _check_seconds(value: Any) -> int | None:
    """A stored check length: whole seconds, or None (not recorded; absent in older baselines)."""
    if value is not None and (type(value) is not int or value < 1):
        raise BaselineError(f"'check_s' must be a check's length in whole seconds or null, got {value!r}")
    return value


def relative_rise(p10: FloatArray, level: FloatArray) -> FloatArray:
    """Each band's rise over the common-mode rise: quiet level(s) minus the baseline's, minus the
    median of that over the bands (per row). A gain change or a background that moved every band
    alike cancels; so does a tonal source switching in a few bands, which moves the median *band
    level* of a spectrum (the shape's reference) by up to 18 dB but not the median *rise*."""
    rise = np.atleast_2d(p10) - level
    out: FloatArray = rise - np.median(rise, axis=1, keepdims=True)
    return out


@dataclass
class Baseline:
    """A sensor's reference quiet (see the module docstring); `version` is set by the store."""

    sensor: str
    level: FloatArray  # median quiet level per band, dB
    level_sigma: FloatArray
    shape: FloatArray  # median shape per band, dB
    shape_sigma: FloatArray
    spread: FloatArray  # median p90 - p10 per band, dB
    tonal: FloatArray  # median tonality per band, dB
    clf_logit: float | None
    clf_sigma: float
    nights: list[str]
    checks: int
    seconds: int
    night_quiet_db: list[float]  # each night's quiet level (all bands), oldest first
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    from_ts: str | None = None
    to_ts: str | None = None
    material: str | None = None
    version: int = 0
    nuisance: Nuisance | None = None  # the night-to-night patterns of its steady checks
    # Per band, the variability of its rise over the common-mode rise (the median rise over all
    # bands) on the baseline checks, dB. None in baselines written before it was kept.
    relative_sigma: FloatArray | None = None
    # The rate of the audio it was learnt from (a recorder's anti-alias filter shapes the top
    # bands): its checks' when they agree; None when they differ or do not say (stored before it
    # was kept).
    sample_rate: int | None = None
    # The rates its checks were heard at when they differ (a device's rate changed while it
    # learnt): its top bands mix two audio chains, and it should be learnt again at one.
    mixed_rates: tuple[int, ...] = ()
    # The length in seconds of the checks it was learnt from, when a file's checks were (`calibrate
    # leak FILE`): its thresholds hold for checks that long (a shorter check's quiet level, a low
    # percentile of fewer one-second levels, scatters more). None: not recorded (the gateway's
    # baselines, and files' baselines written before it was kept).
    check_s: int | None = None

    @classmethod
    def learn(
        cls,
        checks: Sequence[CheckStats],
        *,
        sensor: str,
        min_checks: int = 1,
        material: str | None = None,
        from_ts: str | None = None,
        to_ts: str | None = None,
        spread_tol_db: float = 3.0,
        max_unsteady_bands: int = 4,
        check_s: int | None = None,
    ) -> Baseline:
        """`spread_tol_db` / `max_unsteady_bands`: which checks are steady enough (not disturbed)
        to learn the nuisance patterns from (`judge.JudgeParams` has the same two); `check_s`: the
        checks' length, when they were cut from a file to that length."""
        heard = [c for c in checks if not c.silent]
        if checks and not heard:
            raise BaselineError(
                f"sensor {sensor}: no signal in any of its {len(checks)} check(s) (digital silence): "
                "is the hydrophone connected and its input enabled?"
            )
        clean = [c for c in heard if not c.saturated_s]
        if heard and not clean:
            raise BaselineError(
                f"sensor {sensor}: every one of its {len(heard)} check(s) held audio saturated at full "
                "scale: lower the input gain"
            )
        checks = clean
        rates = {c.sample_rate for c in checks}
        if len(checks) < max(1, min_checks):
            raise BaselineError(f"sensor {sensor}: {len(checks)} quiet check(s), need at least {min_checks}")
        p10 = np.stack([c.p10 for c in checks])
        shapes = np.stack([c.shape for c in checks])
        level = np.median(p10, axis=0)
        shape = np.median(shapes, axis=0)
        logits = np.array([c.clf_logit for c in checks if c.clf_logit is not None])
        clf = float(np.median(logits)) if logits.size else None
        clf_sigma = float(residual_sigma(logits[:, None] - clf)[0]) if clf is not None else PRIOR_SIGMA_DB
        nights: dict[str, list[CheckStats]] = {}
        for c in checks:
            nights.setdefault(c.night, []).append(c)
        night_quiet = [round(float(np.median([c.quiet_db for c in group])), 2) for group in nights.values()]
        calm = [c.p10 for c in checks if unsteady_bands(c.p10, c.p50, spread_tol_db) <= max_unsteady_bands]
        nuisance = Nuisance.learn(np.stack(calm)) if calm else None
        relative = relative_rise(p10, level)
        return cls(
            sensor=sensor,
            level=level,
            level_sigma=residual_sigma(p10 - level),
            shape=shape,
            shape_sigma=residual_sigma(shapes - shape),
            spread=np.median(np.stack([c.spread for c in checks]), axis=0),
            tonal=np.median(np.stack([c.tonal for c in checks if c.tonal is not None]), axis=0)
            if any(c.tonal is not None for c in checks)
            else np.zeros(features.N_BANDS),
            clf_logit=clf,
            clf_sigma=clf_sigma,
            nights=list(nights),
            checks=len(checks),
            seconds=sum(c.seconds for c in checks),
            night_quiet_db=night_quiet,
            from_ts=from_ts,
            to_ts=to_ts,
            material=material,
            nuisance=nuisance,
            relative_sigma=residual_sigma(relative - np.median(relative, axis=0)),
            sample_rate=next(iter(rates)) if len(rates) == 1 else None,
            mixed_rates=_mixed(rates),
            check_s=check_s,
        )

    def quality(self, wanted_nights: int = 7) -> str:
        """'good' (the nights asked for, steady), 'fair' (at least 3 nights) or 'poor'."""
        steady = float(np.median(self.level_sigma)) <= 3.0
        if len(self.nights) >= wanted_nights and steady:
            return "good"
        return "fair" if len(self.nights) >= 3 else "poor"

    def age_days(self, now: datetime | None = None) -> float:
        made = datetime.fromisoformat(self.created)
        return ((now or datetime.now(UTC)) - made).total_seconds() / 86400

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "sensor": self.sensor,
            "version": self.version,
            "created": self.created,
            "from": self.from_ts,
            "to": self.to_ts,
            "material": self.material,
            "band_centres_hz": features.band_centres_hz(),
            "nights": self.nights,
            "checks": self.checks,
            "seconds": self.seconds,
            "night_quiet_db": self.night_quiet_db,
            "level_db": _r(self.level),
            "level_sigma_db": _r(self.level_sigma),
            "shape_db": _r(self.shape),
            "shape_sigma_db": _r(self.shape_sigma),
            "spread_db": _r(self.spread),
            "tonal_db": _r(self.tonal),
            "clf_logit": None if self.clf_logit is None else round(self.clf_logit, 3),
            "clf_sigma": round(self.clf_sigma, 3),
            "nuisance": None if self.nuisance is None else self.nuisance.to_dict(),
            "relative_sigma_db": None if self.relative_sigma is None else _r(self.relative_sigma),
            "sample_rate_hz": self.sample_rate,
            **({"sample_rates_hz": list(self.mixed_rates)} if self.mixed_rates else {}),
            **({} if self.check_s is None else {"check_s": self.check_s}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Baseline:
        if not isinstance(d, dict):
            raise BaselineError(f"not a leak baseline (a JSON {type(d).__name__}, expected an object)")
        if d.get("format") != FORMAT:
            raise BaselineError(f"not a leak baseline (format {d.get('format')!r}, expected {FORMAT!r})")
        if d.get("band_centres_hz") != features.band_centres_hz():
            raise BaselineError("baseline was made with other bands than this detector's")
        try:
            arrays = {
                k: np.asarray(d[k], dtype=np.float64)
                for k in ("level_db", "level_sigma_db", "shape_db", "shape_sigma_db", "spread_db")
            }
            if any(a.shape != (features.N_BANDS,) or not np.all(np.isfinite(a)) for a in arrays.values()):
                raise BaselineError(f"band arrays must hold {features.N_BANDS} finite numbers")
            for k in ("level_sigma_db", "shape_sigma_db", "spread_db"):
                if np.any(arrays[k] < 0):
                    raise BaselineError(f"{k!r} holds a negative spread")
            material = d.get("material")
            if material is not None:
                if not isinstance(material, str):
                    raise BaselineError(f"'material' must be a pipe material's name, got {material!r}")
                material = pipes.material(material).name
            version = d.get("version", 0)
            if type(version) is not int or not 0 <= version < 2**53:
                raise BaselineError(f"'version' must be a whole number from 0, got {version!r}")
            clf = d.get("clf_logit")
            # Baselines written before the nuisance model have none (judged by level and shape).
            nuisance = d.get("nuisance")
            relative = d.get("relative_sigma_db")  # absent in baselines written before it
            rate = _rate(d.get("sample_rate_hz"), "sample_rate_hz")
            mixed = d.get("sample_rates_hz", [])
            if not isinstance(mixed, list):
                raise BaselineError(f"'sample_rates_hz' must be a list of rates, got {mixed!r}")
            return cls(
                sensor=str(d["sensor"]),
                level=arrays["level_db"],
                level_sigma=arrays["level_sigma_db"],
                shape=arrays["shape_db"],
                shape_sigma=arrays["shape_sigma_db"],
                spread=arrays["spread_db"],
                tonal=_bands(d["tonal_db"]),
                clf_logit=None if clf is None else float(clf),
                clf_sigma=float(d["clf_sigma"]),
                nights=[str(n) for n in d["nights"]],
                checks=int(d["checks"]),
                seconds=int(d["seconds"]),
                night_quiet_db=[float(v) for v in d["night_quiet_db"]],
                created=str(d["created"]),
                from_ts=d.get("from"),
                to_ts=d.get("to"),
                material=material,
                version=version,
                nuisance=None if nuisance is None else Nuisance.from_dict(nuisance, features.N_BANDS),
                relative_sigma=None if relative is None else _bands(relative),
                sample_rate=rate,
                mixed_rates=tuple(r for r in (_rate(v, "sample_rates_hz") for v in mixed) if r is not None),
                check_s=_check_seconds(d.get("check_s")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, BaselineError):
                raise
            raise BaselineError(f"baseline field missing or wrong: {exc}") from exc
