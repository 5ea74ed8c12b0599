"""Offline use of the machine-sound detector: what `edge-agent models score machine-sound` and
`edge-agent models features machine-sound` run.

Feature files are numpy `.npy` arrays of shape (clips, 136) in the column order of
`features.FEATURE_NAMES` (the MIMII feature files are such arrays); a WAV recording stands for the
features of its 10 s clips. Scoring calibrates on the normal clips and prints one JSON object per
clip to score: `row` (counted over all the files given), `score` (in units of the alarm level) and
`anomaly` (1 when the score is above 1), with the feature groups that moved for an anomalous row;
a clip from a WAV also says its `file` and `start_s`. A clip of digital silence (RMS about its mean
<= -140 dBFS: a microphone not heard) is neither learnt from nor scored, as on the gateway. Rows are
scored one by one: a file need not be in time order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from water_edge.core import wavio
from water_edge.models.machine_sound.detector import (
    DEFAULT_EIGEN_POWER,
    DEFAULT_MARGIN,
    DEFAULT_QUANTILE,
    DEFAULT_SHAPE_WEIGHT,
    MAX_FEATURE,
    SoundCalibration,
    calibrate,
    explain,
    plausible,
)
from water_edge.models.machine_sound.features import (
    CLIP_S,
    N_FEATURES,
    clip_features,
)
from water_edge.models.machine_sound.features import silent as is_silent
from water_edge.models.machine_sound.prior import PriorName, prior_label, prior_target
from water_edge.models.manifest import ModelError

F64 = npt.NDArray[np.float64]


class InputError(ModelError):
    """A file cannot be used; the message says why in one line."""


NPY_MAGIC = b"\x93NUMPY"


def load_features(path: Path) -> F64:
    magic = b""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(NPY_MAGIC))
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a directory, not a .npy file") from None
    except (OSError, ValueError, EOFError) as exc:
        # numpy's own message for a file of another kind speaks of pickles
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if magic and magic != NPY_MAGIC:
            why = "it does not start as a .npy file does; save it with numpy.save"
        raise InputError(f"{path}: not a numpy .npy array ({why})") from None
    if isinstance(x, np.lib.npyio.NpzFile):  # np.load opens a .npz archive (a zip) as well
        names = ", ".join(x.files)
        x.close()
        raise InputError(
            f"{path}: a .npz archive ({names}), not a .npy array; save one array with numpy.save"
        )
    numeric = np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    if x.ndim != 2 or x.shape[1] != N_FEATURES or not numeric:
        raise InputError(
            f"{path}: expected a numeric array of shape (clips, {N_FEATURES}), got {x.shape} {x.dtype}"
        )
    if len(x) == 0:
        raise InputError(f"{path}: the array has no rows")
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class Clips:
    """Feature rows read from .npy files and WAV recordings, with where each WAV row came from."""

    features: F64
    origin: list[dict[str, Any] | None]  # per row: {"file", "start_s"} for a WAV clip, else None
    silent: npt.NDArray[np.bool_]  # per row: a clip of digital silence
    # Each WAV's sample rate (features of .npy files say none): the features are computed at
    # 16 kHz, but a recorder's rate decides what is left above its Nyquist and how its anti-alias
    # filter shapes the top bands, so clips of another rate than the calibration's differ anyway.
    rates: dict[Path, int] = field(default_factory=dict)

    @classmethod
    def read(cls, paths: Sequence[Path]) -> Clips:
        """`.wav` files are cut into 10 s clips and featurised, anything else is a feature array."""
        parts: list[F64] = []
        origin: list[dict[str, Any] | None] = []
        silent: list[npt.NDArray[np.bool_]] = []
        rates: dict[Path, int] = {}
        for path in paths:
            if path.suffix.lower() == ".wav":
                x, rates[path] = wav_clips(path)
                origin += [{"file": str(path), "start_s": round(i * CLIP_S, 3)} for i in range(len(x))]
            else:
                x = load_features(path)
                origin += [None] * len(x)
            silent.append(is_silent(x))
            parts.append(x)
        return cls(np.vstack(parts), origin, np.concatenate(silent), rates)

    def normal(self) -> F64:
        """The rows to calibrate on: every one but the silent; InputError when none is left."""
        kept: F64 = self.features[~self.silent]
        if len(kept) == 0:
            raise InputError("every calibration clip is digital silence: the microphone was not heard")
        return kept


def score_clips(clips: Clips, normal: Clips, *, prior: PriorName = "none") -> Iterator[str]:
    """`score_lines` for `Clips`: WAV rows gain `file` and `start_s`, silent clips are left out of
    the calibration and printed as not heard."""
    for i, line in enumerate(score_lines(clips.features, normal.normal(), prior=prior)):
        origin = clips.origin[i]
        if origin is None and not clips.silent[i]:
            yield line
            continue
        row = {**json.loads(line), **(origin or {})}
        if clips.silent[i]:
            row.update(score=None, anomaly=None, error="digital silence: the microphone was not heard")
            row.pop("explanation", None)
            row.pop("groups", None)
        yield json.dumps(row)


def score_lines(
    features: F64,
    normal: F64,
    *,
    prior: PriorName = "none",
    shrinkage: float | None = None,
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
    eigen_power: float = DEFAULT_EIGEN_POWER,
    shape_weight: float = DEFAULT_SHAPE_WEIGHT,
) -> Iterator[str]:
    """Calibrate on `normal` (covariance shrunk towards `prior`), then one JSON line per row of
    `features` (non-finite rows: score null)."""
    cal = calibrate(
        normal,
        prior=prior_target(prior),
        prior_name=prior_label(prior),
        shrinkage=shrinkage,
        quantile=quantile,
        margin=margin,
        eigen_power=eigen_power,
        shape_weight=shape_weight,
    )
    for i, row in enumerate(scored_rows(cal, features)):
        yield json.dumps({"row": i, **row})


def scored_rows(cal: SoundCalibration, features: F64) -> Iterator[dict[str, Any]]:
    """Per row of `features`: `score` and `anomaly` against `cal`, with the `explanation` and
    `groups` of an anomalous row (rows that are not `plausible`: score null, `error`)."""
    usable = plausible(features)
    scores = np.full(len(features), np.nan)
    if usable.any():
        scores[usable] = cal.score(features[usable])
    for i, s in enumerate(scores):
        row: dict[str, Any] = {}
        if not usable[i]:
            row.update(score=None, anomaly=None, error=f"non-finite features, or beyond ±{MAX_FEATURE:g}")
        else:
            row.update(score=round(float(s), 4), anomaly=int(s > 1.0))
            if s > 1.0:
                evidence = cal.evidence(features[i : i + 1])
                row["explanation"] = explain(evidence)
                row["groups"] = [e for e in evidence if float(e["score"]) >= 1.0] or evidence[:1]
        yield row


def other_rates(clips: Clips, calibration: Clips) -> Iterator[str]:
    """What to warn about each WAV of `clips` recorded at another rate than the calibration's WAVs
    (nothing when the calibration is features alone: its rate is not known)."""
    made = sorted(set(calibration.rates.values()))
    if not made:
        return
    said = " or ".join(f"{r} Hz" for r in made)
    for path, rate in clips.rates.items():
        if rate in made:
            continue
        hint = (
            f"its sound above {rate // 2} Hz is missing, and scores as a change"
            if rate < min(made)
            else "the recorders' anti-alias filters shape its top bands otherwise: a change to the score"
        )
        yield (
            f"{path}: recorded at {rate} Hz, the calibration's WAVs at {said}: {hint}; "
            f"calibrate on normal recordings made at {rate} Hz"
        )


def wav_features(path: Path, clip_s: float = CLIP_S) -> F64:
    """The 136 features of each whole `clip_s` clip of a recording (a shorter tail is left out); any
    PCM or float WAV, channels averaged, read a clip at a time (a day of sound fits in memory)."""
    return wav_clips(path, clip_s)[0]


def wav_clips(path: Path, clip_s: float = CLIP_S) -> tuple[F64, int]:
    """`wav_features` and the recording's sample rate."""
    try:
        raw, rate = wavio.open_wav(path)
    except wavio.WavError as exc:
        raise InputError(str(exc)) from None
    n = round(clip_s * rate)
    clips = raw.shape[0] // n
    if clips == 0:
        raise InputError(f"{path}: shorter than one {clip_s:g} s clip")

    def clip(i: int) -> F64:
        try:
            mono: F64 = wavio.to_float(wavio.frames(raw, i * n, (i + 1) * n), path).mean(axis=1)
        except wavio.WavError as exc:
            raise InputError(str(exc)) from None
        return mono

    return np.vstack([clip_features(clip(i), rate) for i in range(clips)]), rate
