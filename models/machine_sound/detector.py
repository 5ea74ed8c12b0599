"""A machine's normal sound, learnt from its own clips, and how far a new clip is from it.

Calibration (numpy, on the gateway, normal clips only) takes each clip's 136 features
(`features.py`), turns the 128 cepstral coefficients back into the 128 mean log mel band levels
(the inverse orthonormal DCT: the same information, in bands an engineer can name), standardises
every column by the calibration clips' mean and spread, and estimates their covariance shrunk
towards the identity (`shrinkage`, 0.01) or, given a `prior` (`prior.py`: how pumps' features
co-vary), towards that prior, which counts as `prior_clips` (43) clips. A clip's *statistic* adds
two measures of how far it is
from the calibration mean, each in units of its own spread over calibration clips left out of the
fit:
- the eigen-weighted distance sqrt(sum_i y_i^2 / lambda_i^p), y_i the clip's coordinate on the
  i-th principal direction of the normal clips, lambda_i its variance; p = 1 is the Mahalanobis
  distance, `eigen_power` p = 2 weighs the directions in which the normal sound hardly varies more;
- `shape_weight` (1) times the *shape shift*: the likelihood-ratio statistic for a change of the
  spectrum's broad shape (its level, tilt and curvature: the first `SHAPE_TERMS` DCT shapes along
  the mel bands) or of any one waveform statistic, judged against the machine's own variation.
Its *score* is that statistic over the alarm level, a high quantile of what normal clips the
calibration did not see score (10-fold out-of-fold) times a margin: above 1 is abnormal.
Out-of-fold matters: with 100 clips and 136 features, the clips a covariance was fitted on sit far
closer to it than any new clip. `eigen_power = 1, shape_weight = 0` is the plain Mahalanobis
distance (the detector before issue 16's third pass, and what a format-1 calibration file holds).

Every choice was made on the real MIMII pump features, leave one pump out (docs/machine-sound.md):
mean AUC with 100 clips at +6 / 0 / -6 dB: a plain shrunk Mahalanobis distance on the cepstral
columns (shrinkage 0.1) 0.983 / 0.935 / 0.828; the same on the bands (shrinkage 0.003, the second
pass) 0.990 / 0.946 / 0.848; this detector 0.990 / 0.954 / 0.858 (every setting chosen leave one
pump out: 0.990 / 0.952 / 0.854), with the pump prior derived from the other pumps 0.991 / 0.961 /
0.864. No prior about which way faults go: both terms are blind to the sign of a change.

Evidence: the same distance on groups of columns (level, impulsiveness, low / mid / high bands,
the amplitude distribution), each over its own out-of-fold quantile, says which moved and which
way ("louder", "more energy above 2 kHz", "more impulsive").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from water_edge.core import dsp
from water_edge.models.machine_sound.features import (
    N_FEATURES,
    N_MELS,
    SAMPLE_RATE,
    STAT_NAMES,
    mel_filterbank,
)
from water_edge.models.manifest import ModelError
from water_edge.models.versioned_store import known_fields

F64 = npt.NDArray[np.float64]

CALIBRATION_FORMAT: Final = 2
READABLE_FORMATS: Final = (1, 2)  # format 1: the plain Mahalanobis distance (no shape term)
MIN_CLIPS: Final = 10
# No feature of a real clip comes near this, at any PCM scale (the largest in the MIMII pumps' ~1e5)
MAX_FEATURE: Final = 1e15
DEFAULT_SHRINKAGE: Final = 0.01  # towards the identity (no prior)
# A prior counts as this many clips: shrinkage prior_clips / (clips + prior_clips), 0.3 with 100
# clips, fading as a machine's own clips grow (0.02 with 2000).
DEFAULT_PRIOR_CLIPS: Final = 43.0
DEFAULT_EIGEN_POWER: Final = 2.0
DEFAULT_SHAPE_WEIGHT: Final = 1.0
SHAPE_TERMS: Final = 4  # DCT shapes along the mel bands in the shape shift (level, tilt, ...)
DEFAULT_QUANTILE: Final = 0.99
DEFAULT_MARGIN: Final = 1.1
FOLDS: Final = 10
_STAT = {name: N_MELS + i for i, name in enumerate(STAT_NAMES)}


def _band_centres_hz() -> F64:
    fb = mel_filterbank()
    hz = np.linspace(0.0, SAMPLE_RATE / 2, fb.shape[1])
    return np.asarray((fb * hz).sum(axis=1) / fb.sum(axis=1), dtype=np.float64)


def _groups() -> dict[str, list[int]]:
    centre = _band_centres_hz()
    return {
        "level": [_STAT["rms"], _STAT["std"], _STAT["peak_to_peak"]],
        "impulsiveness": [_STAT["kurtosis"], _STAT["crest_factor"], _STAT["skewness"]],
        "low_band": [int(i) for i in np.flatnonzero(centre < 500.0)],
        "mid_band": [int(i) for i in np.flatnonzero((centre >= 500.0) & (centre < 2000.0))],
        "high_band": [int(i) for i in np.flatnonzero(centre >= 2000.0)],
        "distribution": [_STAT["entropy"], _STAT["mean"]],
    }


GROUPS: Final[dict[str, list[int]]] = _groups()
# How an operator reads a group that moved up / down.
GROUP_WORDS: Final[dict[str, tuple[str, str]]] = {
    "level": ("louder", "quieter"),
    "impulsiveness": ("more impulsive", "less impulsive"),
    "low_band": ("more energy below 500 Hz", "less energy below 500 Hz"),
    "mid_band": ("more energy at 500-2000 Hz", "less energy at 500-2000 Hz"),
    "high_band": ("more energy above 2 kHz", "less energy above 2 kHz"),
    "distribution": ("amplitude distribution changed", "amplitude distribution changed"),
}


class CalibrationError(ModelError):
    """The calibration clips cannot be used (too few, wrong shape, not finite)."""


def to_bands(features: npt.ArrayLike) -> F64:
    """(clips, 136) features -> (clips, 136) with the 128 cepstral columns as mean log mel bands."""
    x = np.atleast_2d(np.asarray(features, dtype=np.float64))
    if x.shape[1] != N_FEATURES:
        raise CalibrationError(f"expected {N_FEATURES} feature columns, got {x.shape[1]}")
    bands = dsp.idct_ortho(x[:, :N_MELS], axis=1)
    return np.concatenate([bands, x[:, N_MELS:]], axis=1)


def _shrunk_cov(z: F64, shrinkage: float, target: F64 | None = None) -> F64:
    """Covariance of the standardised clips shrunk towards `target` (a correlation: a prior), or
    towards the identity."""
    cov = np.atleast_2d(np.cov(z, rowvar=False))
    tgt = np.eye(cov.shape[0]) if target is None else target
    return np.asarray((1.0 - shrinkage) * cov + shrinkage * tgt, dtype=np.float64)


def _precision(z: F64, shrinkage: float, target: F64 | None = None) -> F64:
    return np.asarray(np.linalg.inv(_shrunk_cov(z, shrinkage, target)), dtype=np.float64)


def _distance(z: F64, precision: F64) -> F64:
    # sqrt(z_i P z_i) per row; the product through BLAS: a three-operand einsum loops in C without
    # it, three times slower on a thousand clips (the same numbers, up to float rounding).
    return np.asarray(np.sqrt(np.maximum(0.0, ((z @ precision) * z).sum(axis=1))), dtype=np.float64)


def shape_basis() -> F64:
    """(136, SHAPE_TERMS + 8): the first DCT shapes along the mel bands (a change of the log
    spectrum's level, tilt, curvature...) and each waveform statistic on its own."""
    basis = np.zeros((N_FEATURES, SHAPE_TERMS + N_FEATURES - N_MELS))
    basis[:N_MELS, :SHAPE_TERMS] = dsp.idct_ortho(np.eye(N_MELS)[:SHAPE_TERMS], axis=1).T
    basis[N_MELS:, SHAPE_TERMS:] = np.eye(N_FEATURES - N_MELS)
    return basis


@dataclass(frozen=True)
class _Fit:
    """The two measures of distance from normal fitted on standardised clips `z` (scale `scale`)."""

    weighted: F64  # (136, 136): sum_i y_i^2 / lambda_i^p as a quadratic form
    shape: F64  # (136, m): |z @ shape|^2 is the shape-shift likelihood-ratio statistic

    @classmethod
    def of(cls, z: F64, scale: F64, shrinkage: float, eigen_power: float, target: F64 | None) -> _Fit:
        lam, vec = np.linalg.eigh(_shrunk_cov(z, shrinkage, target))
        lam = np.maximum(lam, 1e-12)
        whiten = (vec / np.sqrt(lam)) @ vec.T
        # The shift is confined to span(B) in band units; in standardised units the basis is B / scale.
        # The statistic is the whitened clip's length inside the whitened span: an orthonormal basis
        # of it by SVD, so a column that never varied (scale ~ 0) makes no singular system.
        b = shape_basis() / scale[:, None]
        u, sv, _ = np.linalg.svd(whiten @ (b / np.linalg.norm(b, axis=0)), full_matrices=False)
        span = u[:, sv > sv[0] * 1e-10]
        return cls(np.asarray((vec / lam**eigen_power) @ vec.T), np.asarray(whiten @ span))

    def measures(self, z: F64) -> tuple[F64, F64]:
        return _distance(z, self.weighted), np.asarray(np.linalg.norm(z @ self.shape, axis=1))


@dataclass
class GroupModel:
    columns: list[int]
    precision: list[list[float]]
    threshold: float  # out-of-fold quantile of the group's distance


@dataclass
class SoundCalibration:
    """A machine's learnt normal sound; stored as JSON, versioned like a pump's calibration."""

    mean: list[float]
    scale: list[float]
    precision: list[list[float]]  # the eigen-weighted distance's quadratic form
    threshold: float  # statistic at the alarm level (the score's unit)
    groups: dict[str, GroupModel]
    clips: int
    shrinkage: float
    quantile: float
    margin: float
    oof_scores: list[float]  # the calibration clips' own out-of-fold scores (the normal spread)
    # statistic = distance_weight * distance + shape_weight_scaled * shape shift (format 2)
    shape: list[list[float]] | None = None
    distance_weight: float = 1.0
    shape_weight_scaled: float = 0.0
    eigen_power: float = 1.0
    shape_weight: float = 0.0
    prior: str | None = None  # the prior the covariance was shrunk towards ("pump 1.0.0"), if any
    version: int = 1
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    from_ts: str | None = None
    to_ts: str | None = None
    format: int = CALIBRATION_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> SoundCalibration:
        """A stored calibration of a readable format; keys this release does not know (a later
        release's, added without a format change) are ignored, as the pump's are."""
        if not isinstance(data, dict):
            got = type(data).__name__
            raise ModelError(f"machine-sound calibration file is malformed: a JSON object expected ({got})")
        if data.get("format") not in READABLE_FORMATS:
            raise ModelError(
                f"machine-sound calibration format {data.get('format')!r} is not one of {READABLE_FORMATS}: "
                "calibrate the machine again (edge-agent models calibrate machine-sound)"
            )
        try:
            groups = {k: GroupModel(**known_fields(GroupModel, v)) for k, v in data["groups"].items()}
            # A format-1 file (the plain Mahalanobis distance) keeps scoring as it did.
            return cls(**{**known_fields(cls, data), "groups": groups, "format": CALIBRATION_FORMAT})
        except (KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"machine-sound calibration file is malformed: {exc}") from exc

    # -- scoring ----------------------------------------------------------------------------------

    def standardise(self, features: npt.ArrayLike) -> F64:
        return np.asarray(
            (to_bands(features) - np.asarray(self.mean)) / np.asarray(self.scale), dtype=np.float64
        )

    def score(self, features: npt.ArrayLike) -> F64:
        """Per clip, the distance from normal in units of the alarm level (above 1: abnormal)."""
        z = self.standardise(features)
        stat = self.distance_weight * _distance(z, np.asarray(self.precision))
        if self.shape is not None and self.shape_weight_scaled:
            stat = stat + self.shape_weight_scaled * np.linalg.norm(z @ np.asarray(self.shape), axis=1)
        return np.asarray(stat / self.threshold, dtype=np.float64)

    def evidence(self, features: npt.ArrayLike) -> list[dict[str, Any]]:
        """Per group, over the given clips (their mean deviation): its score in units of its own
        alarm level and the direction it moved, largest first."""
        z = self.standardise(features).mean(axis=0, keepdims=True)
        out = []
        for name, g in self.groups.items():
            cols = g.columns
            s = float(_distance(z[:, cols], np.asarray(g.precision))[0] / g.threshold)
            up = float(z[0, cols[0]] if name in ("level", "impulsiveness") else z[0, cols].mean()) >= 0
            out.append({"group": name, "score": round(s, 3), "direction": "up" if up else "down"})
        return sorted(out, key=lambda e: -float(e["score"]))


def explain(evidence: Sequence[dict[str, Any]], limit: float = 1.0, top: int = 3) -> str:
    """A short sentence from `evidence`: the groups above `limit` (or the largest one)."""
    moved = [e for e in evidence if float(e["score"]) >= limit][:top] or list(evidence[:1])
    words = []
    for e in moved:
        up, down = GROUP_WORDS.get(str(e["group"]), (str(e["group"]), str(e["group"])))
        words.append(up if e["direction"] == "up" else down)
    return ", ".join(dict.fromkeys(words))


def _folds(n: int, k: int) -> list[npt.NDArray[np.int64]]:
    return [f for f in np.array_split(np.arange(n), min(k, n)) if len(f)]


def _out_of_fold(
    z: F64, folds: list[npt.NDArray[np.int64]], measure: Callable[[F64, F64, F64], tuple[F64, ...]]
) -> tuple[F64, ...]:
    """Each clip's measures under a fit without its fold (the standardisation refitted too):
    `measure(train, held_out, sd)` gets both standardised by the remaining clips, and their `sd`."""
    out: list[F64] = []
    for f in folds:
        keep = np.ones(len(z), dtype=bool)
        keep[f] = False
        train = z[keep]
        mu, sd = train.mean(axis=0), train.std(axis=0) + 1e-12
        values = measure((train - mu) / sd, (z[f] - mu) / sd, sd)
        out = out or [np.empty(len(z)) for _ in values]
        for column, v in zip(out, values, strict=True):
            column[f] = v
    return tuple(out)


def plausible(features: F64) -> npt.NDArray[np.bool_]:
    """Rows (clips x 136) that can be features of a sound: finite, and none beyond `MAX_FEATURE`
    (an export's sentinel such as float32's largest value): one such clip in a calibration would
    make every spread so wide that nothing scores above zero."""
    with np.errstate(invalid="ignore"):
        out: npt.NDArray[np.bool_] = np.asarray((np.abs(features) <= MAX_FEATURE).all(axis=1), dtype=bool)
    return out


def calibrate(
    features: npt.ArrayLike,
    *,
    shrinkage: float | None = None,
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
    eigen_power: float = DEFAULT_EIGEN_POWER,
    shape_weight: float = DEFAULT_SHAPE_WEIGHT,
    prior: F64 | None = None,
    prior_name: str | None = None,
    prior_clips: float = DEFAULT_PRIOR_CLIPS,
    from_ts: str | None = None,
    to_ts: str | None = None,
) -> SoundCalibration:
    """Learn a machine's normal from `features` (clips x 136) of normal clips. `prior`: a (136, 136)
    correlation the covariance is shrunk towards instead of the identity (`prior.py`); `shrinkage`
    (default: `DEFAULT_SHRINKAGE` without a prior, prior_clips / (clips + prior_clips) with one)."""
    if prior is not None and np.shape(prior) != (N_FEATURES, N_FEATURES):
        raise CalibrationError(f"a prior must be ({N_FEATURES}, {N_FEATURES}), got {np.shape(prior)}")
    raw = np.asarray(features, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != N_FEATURES:
        raise CalibrationError(f"calibration features must be (clips, {N_FEATURES}), got {raw.shape}")
    raw = raw[plausible(raw)]
    if len(raw) < MIN_CLIPS:
        raise CalibrationError(
            f"need at least {MIN_CLIPS} calibration clips with finite features within ±{MAX_FEATURE:g}, "
            f"got {len(raw)}"
        )
    if (distinct := len(np.unique(raw, axis=0))) < MIN_CLIPS:
        # Real sound never gives one clip's 136 features twice: a stuck export or a copied row.
        raise CalibrationError(
            f"need at least {MIN_CLIPS} different calibration clips, got {distinct} different of {len(raw)}"
        )
    if shrinkage is None:
        shrinkage = DEFAULT_SHRINKAGE if prior is None else prior_clips / (len(raw) + prior_clips)
    x = to_bands(raw)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.maximum(scale, 1e-9 * (np.abs(mean) + 1.0))
    z = (x - mean) / scale
    # Shuffled folds: clips are in time order, and a fold of consecutive clips would hold out a
    # whole stretch of the calibration (its distance then measures drift, not a new clip).
    order = np.random.default_rng(len(z)).permutation(len(z))
    folds = [order[f] for f in _folds(len(z), FOLDS)]
    # The shape basis is expressed in band units: a fold's standardisation rescales it by `sd`.
    oof_dist, oof_shape = _out_of_fold(
        z, folds, lambda tr, te, sd: _Fit.of(tr, scale * sd, shrinkage, eigen_power, prior).measures(te)
    )
    # Each measure in units of its own out-of-fold spread, so that the weight means the same on
    # every machine (the two measures' scales differ with the number of clips and the machine).
    # Without the shape term the statistic stays the distance itself, as in a format-1 file.
    distance_weight = 1.0 / max(float(oof_dist.std()), 1e-12) if shape_weight else 1.0
    shape_weight_scaled = shape_weight / max(float(oof_shape.std()), 1e-12)
    oof = distance_weight * oof_dist + shape_weight_scaled * oof_shape
    threshold = float(np.quantile(oof, quantile) * margin)
    fit = _Fit.of(z, scale, shrinkage, eigen_power, prior)
    groups = {}
    for name, cols in GROUPS.items():
        g_target = None if prior is None else prior[np.ix_(cols, cols)]

        def group_distance(tr: F64, te: F64, _sd: F64, target: F64 | None = g_target) -> tuple[F64]:
            return (_distance(te, _precision(tr, shrinkage, target)),)

        (g_oof,) = _out_of_fold(z[:, cols], folds, group_distance)
        groups[name] = GroupModel(
            cols,
            _precision(z[:, cols], shrinkage, g_target).tolist(),
            max(1e-9, float(np.quantile(g_oof, quantile) * margin)),
        )
    return SoundCalibration(
        mean=mean.tolist(),
        scale=scale.tolist(),
        precision=fit.weighted.tolist(),
        threshold=max(threshold, 1e-9),
        groups=groups,
        clips=len(z),
        shrinkage=shrinkage,
        quantile=quantile,
        margin=margin,
        oof_scores=[round(float(v), 4) for v in oof / max(threshold, 1e-9)],
        shape=fit.shape.tolist(),
        distance_weight=distance_weight,
        shape_weight_scaled=shape_weight_scaled,
        eigen_power=eigen_power,
        shape_weight=shape_weight,
        prior=prior_name if prior is not None else None,
        from_ts=from_ts,
        to_ts=to_ts,
    )


def auc(normal: npt.ArrayLike, abnormal: npt.ArrayLike) -> float:
    """Probability that an abnormal clip scores above a normal one (ties count half)."""
    n = np.asarray(normal, dtype=np.float64)
    a = np.asarray(abnormal, dtype=np.float64)
    if not len(n) or not len(a):
        return math.nan
    s = np.concatenate([n, a])
    order = s.argsort(kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    # average ranks over ties
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[len(n) :].sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(n)))
