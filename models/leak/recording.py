"""A recording as checks: how `edge-agent models calibrate leak` and `score leak --baseline` see a WAV.

A recording is treated as one listening night cut into checks of `check_s` whole seconds (a
shorter remainder joins the check before it, which is then up to twice as long: no check is
shorter than `check_s`, and a recording shorter than one check is refused). Each check gets its
one-second band levels and the classifier's probabilities on its 2 s windows (hop 1 s),
summarised by `CheckStats`.

`span` keeps a part of the file, (start, end) in seconds from its beginning (either None: the file's
own): a logger's recording of the whole evening, judged on its quiet hours only. Checks then count
from the span's start, and their `start_ns` is still the second of the file they begin at.

A recording longer than `LONG_S` (a logger's night) is read from its memory-mapped file and brought
to 8 kHz a segment of whole checks at a time, with `PAD_S` of context each side for the resampler,
so memory stays that of one segment: a 30 min file at 16 kHz took 790 MB read whole, and a Pi
running the agent has little more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from water_edge.core.clipping import saturated_seconds
from water_edge.core.dropouts import dropout_seconds
from water_edge.core.wavio import frames, open_wav, to_float
from water_edge.models.leak import features
from water_edge.models.leak.baseline import CheckStats
from water_edge.models.leak.check_length import (
    DEFAULT_CHECK_S,
    SHORTEST_CHECK_S,
    check_length,
)
from water_edge.models.leak.detector import LeakScorer, Score, band_levels
from water_edge.models.leak.levels import SECOND, second_bands

LONG_S: Final = 600  # longer recordings are read a segment at a time
SEGMENT_S: Final = 300  # about this much per segment: a whole number of checks
PAD_S: Final = 2  # resampler context each side of a segment, cut off after

FloatArray = npt.NDArray[np.float64]
Span = tuple[float | None, float | None]
WHOLE: Final[Span] = (None, None)


def span_frames(n_frames: int, rate: int, span: Span) -> tuple[int, int]:
    """Frames [a, b) of a recording of `n_frames` that `span` keeps; ValueError when it keeps none."""
    start, end = span
    a = 0 if start is None else round(start * rate)
    b = n_frames if end is None else min(n_frames, round(end * rate))
    length = f"the recording is {n_frames / rate:.2f} s long"
    if start is not None and (start < 0 or a >= n_frames):
        raise ValueError(f"--start {start:g} s is outside the recording ({length})")
    if end is not None and end <= (start or 0.0):
        raise ValueError(f"--end {end:g} s is not after --start {start or 0:g} s")
    return a, b


def split_checks(n_seconds: int, check_s: float) -> list[tuple[int, int]]:
    """Second ranges [a, b) of the checks of an `n_seconds` recording; ValueError when it holds
    no whole check (a shorter one would be judged on too few one-second levels)."""
    size = check_length(check_s)
    if n_seconds < size:
        raise ValueError(
            f"{n_seconds} s to judge, less than one whole check of {size} s (--check-s): not judged; "
            "give a longer recording (or --start/--end span), or calibrate and score with a shorter "
            f"--check-s (at least {SHORTEST_CHECK_S})"
        )
    edges = list(range(0, n_seconds, size))
    if len(edges) > 1 and n_seconds - edges[-1] < size:
        edges.pop()  # a short tail joins the check before it
    return [(a, b) for a, b in zip(edges, [*edges[1:], n_seconds], strict=True)]


def recording_checks(
    canon: FloatArray,
    name: str,
    *,
    check_s: float = DEFAULT_CHECK_S,
    scorer: LeakScorer | None = None,
    offset_s: int = 0,
    marks: SecondMarks | None = None,
) -> list[CheckStats]:
    """Checks of a canonical (8 kHz, one channel) recording; the classifier is skipped without a
    scorer. `offset_s`: where the recording starts in its file (the checks' `start_ns`); `marks`:
    its saturated and dropout seconds, as stored (`SecondMarks`)."""
    levels, tonal = second_bands(canon)
    return [
        _check(
            canon[a * SECOND : b * SECOND],
            levels[a:b],
            tonal[a:b],
            name=name,
            index=index,
            start_s=offset_s + a,
            scorer=scorer,
            marks=None if marks is None else marks[a:b],
        )[0]
        for index, (a, b) in enumerate(split_checks(levels.shape[0], check_s))
    ]


@dataclass(frozen=True)
class SecondMarks:
    """Per second of a recording as stored (its judged channel, at its own rate): saturated at full
    scale (`core.clipping`: judged, never learnt from) and dropouts (`core.dropouts`: not the pipe,
    left out of the levels, as the gateway leaves out what its audio driver marks)."""

    saturated: npt.NDArray[np.bool_]
    dropout: npt.NDArray[np.bool_]
    sample_rate: int  # the recording's, for its checks (`CheckStats.sample_rate`)

    @classmethod
    def of(cls, channel: FloatArray, rate: int) -> SecondMarks:
        return cls(saturated_seconds(channel, rate), dropout_seconds(channel, rate), rate)

    def __getitem__(self, seconds: slice) -> SecondMarks:
        return SecondMarks(self.saturated[seconds], self.dropout[seconds], self.sample_rate)

    def notes(self) -> list[str]:
        return _mark_notes(int(self.saturated.sum()), int(self.dropout.sum()))


def _mark_notes(saturated_s: int, dropout_s: int) -> list[str]:
    out = []
    if saturated_s:
        out.append(f"{saturated_s} s saturated at full scale (clipped): judged, never learnt from")
    if dropout_s:
        out.append(f"{dropout_s} s with dropouts (one value for 50 ms or more): left out, not the pipe")
    return out


def _check(
    piece: FloatArray,
    levels: FloatArray,
    tonal: FloatArray,
    *,
    name: str,
    index: int,
    start_s: int,
    scorer: LeakScorer | None,
    marks: SecondMarks | None = None,
) -> tuple[CheckStats, FloatArray | None, list[float]]:
    """One check's statistics, and the classifier's feature rows and probabilities on its 2 s
    windows (hop 1 s). Dropout seconds are left out of its levels (all of them, when every second
    is one: the check is then silent)."""
    saturated_s = 0
    if marks is not None:
        saturated_s = int(marks.saturated.sum())
        heard = ~marks.dropout[: levels.shape[0]]
        if heard.any() and not heard.all():
            levels, tonal = levels[heard], tonal[heard]
    rows = None
    probs: list[float] = []
    if piece.size >= features.NFFT:
        rows = features.windows(piece, hop_s=1.0)
        if scorer is not None:
            probs = [float(p) for p in scorer.probabilities(rows)]
    stats = CheckStats.from_levels(
        levels,
        night=name,
        index=index,
        start_ns=start_s * 1_000_000_000,
        probabilities=probs,
        tonality=tonal,
        saturated_s=saturated_s,
        sample_rate=None if marks is None else marks.sample_rate,
    )
    return stats, rows, probs


def read_recording(
    path: Path,
    *,
    check_s: float = DEFAULT_CHECK_S,
    scorer: LeakScorer,
    checks: bool = True,
    span: Span = WHOLE,
    channel: int = 0,
) -> tuple[Score, list[CheckStats]]:
    """A WAV file's (or its `span`'s) classifier score and (with `checks`) its checks, on its
    `channel` (from 0); `WavError` / `ValueError` when it cannot be used. The score's `notes` say
    what was done to read it."""
    raw, rate = open_wav(path)
    a, b = span_frames(raw.shape[0], rate, span)
    notes = [f"{rate} Hz, {raw.shape[1]} channel(s), {raw.shape[0] / rate:.2f} s"]
    _check_channel(raw, channel, notes)
    if (a, b) != (0, raw.shape[0]):
        notes.append(f"judged from {a / rate:g} s to {b / rate:g} s")
    classifier = _classifier(scorer, rate, notes)
    if (b - a) / rate <= LONG_S:
        samples = to_float(frames(raw, a, b), path)[:, channel : channel + 1]
        marks = _marks(samples, rate, notes)
        score = scorer.score(samples, rate, classify=classifier is not None)
        score.notes[:0] = notes
        if marks.dropout.size and marks.dropout.all():
            score.not_heard()
        if not checks:
            return score, []
        canon = features.prepare(samples, rate)[0]
        return score, recording_checks(
            canon, path.name, check_s=check_s, scorer=classifier, offset_s=a // rate, marks=marks
        )
    return _long(
        raw,
        rate,
        path,
        (a, b),
        check_s=check_s,
        scorer=classifier,
        notes=notes,
        channel=channel,
        name=path.name,
    )


def _check_channel(raw: np.ndarray[Any, Any], channel: int, notes: list[str]) -> None:
    """ValueError when the file has no `channel`; a note which one is judged when it has several."""
    if not 0 <= channel < raw.shape[1]:
        raise ValueError(f"has {raw.shape[1]} channel(s): --channel {channel + 1} is not one of them")
    if raw.shape[1] > 1:
        notes.append(f"channel {channel + 1} of {raw.shape[1]} judged (--channel)")


def _marks(samples: FloatArray, rate: int, notes: list[str]) -> SecondMarks:
    """The judged (first) channel's `SecondMarks`; notes say how many seconds of each."""
    marks = SecondMarks.of(samples[:, 0] if samples.ndim == 2 else samples, rate)
    notes += marks.notes()
    return marks


def _classifier(scorer: LeakScorer, rate: int, notes: list[str]) -> LeakScorer | None:
    """The classifier, or None (with a note) where it does not hear the file (`classifier_hears`)."""
    if features.classifier_hears(rate):
        return scorer
    notes.append(
        f"below {features.SAMPLE_RATE} Hz: the classifier (trained on {features.SAMPLE_RATE} Hz audio, "
        f"bands to {features.SAMPLE_RATE // 2000} kHz) is not applied; judged on its band levels "
        "against a baseline"
    )
    return None


def file_checks(
    path: Path,
    *,
    check_s: float = DEFAULT_CHECK_S,
    scorer: LeakScorer,
    span: Span = WHOLE,
    notes: list[str] | None = None,
    channel: int = 0,
    night: str | None = None,
) -> list[CheckStats]:
    """A WAV file's (or its `span`'s) checks alone (what a calibration learns from), on its
    `channel`: no whole-file classifier score. `notes` receives what was done to read it. `night`
    names the night they are of (default: the file's name)."""
    said: list[str] = [] if notes is None else notes
    name = path.name if night is None else night
    raw, rate = open_wav(path)
    a, b = span_frames(raw.shape[0], rate, span)
    _check_channel(raw, channel, said)
    classifier = _classifier(scorer, rate, said)
    if (b - a) / rate <= LONG_S:
        samples = to_float(frames(raw, a, b), path)[:, channel : channel + 1]
        marks = _marks(samples, rate, said)
        canon = features.prepare(samples, rate)[0]
        return recording_checks(
            canon, name, check_s=check_s, scorer=classifier, offset_s=a // rate, marks=marks
        )
    return _long(
        raw, rate, path, (a, b), check_s=check_s, scorer=classifier, notes=said, channel=channel, name=name
    )[1]


def _long(
    raw: np.ndarray[Any, Any],
    rate: int,
    path: Path,
    kept: tuple[int, int],
    *,
    check_s: float,
    scorer: LeakScorer | None,
    notes: list[str],
    channel: int,
    name: str,
) -> tuple[Score, list[CheckStats]]:
    """A long recording read a segment at a time; `name`: the night its checks are of."""
    first_frame, stop_frame = kept
    seconds = (stop_frame - first_frame) // rate
    ranges = split_checks(seconds, check_s)
    per_segment = max(1, round(SEGMENT_S / (ranges[0][1] - ranges[0][0])))
    out: list[CheckStats] = []
    probs: list[float] = []
    energy, samples, rows_sum, rows = 0.0, 0, np.zeros(features.N_FEATURES), 0
    clipped_s = dropout_s = marked_s = 0
    for first in range(0, len(ranges), per_segment):
        group = ranges[first : first + per_segment]
        a, b = group[0][0], group[-1][1]
        lo, hi = max(0, a - PAD_S), min(seconds, b + PAD_S)
        block = frames(raw, first_frame + lo * rate, first_frame + hi * rate)[:, channel : channel + 1]
        piece = to_float(block, path)
        marks = SecondMarks.of(piece[:, 0], rate)[a - lo : b - lo]
        clipped_s, dropout_s = clipped_s + int(marks.saturated.sum()), dropout_s + int(marks.dropout.sum())
        marked_s += marks.dropout.size
        canon, done = features.prepare(piece, rate)
        del piece  # a segment's samples as float64 (38 MB at 16 kHz): not held through its checks
        if first == 0:
            notes += done
        canon = canon[(a - lo) * SECOND : (b - lo) * SECOND]
        energy, samples = energy + float(np.sum(canon * canon)), samples + canon.size
        levels, tonal = second_bands(canon)
        for index, (ca, cb) in enumerate(group, start=first):
            i, j = ca - a, cb - a
            stats, feats, p = _check(
                canon[i * SECOND : j * SECOND],
                levels[i:j],
                tonal[i:j],
                name=name,
                index=index,
                start_s=first_frame // rate + ca,
                scorer=scorer,
                marks=marks[i:j],
            )
            out.append(stats)
            probs += p
            if feats is not None:
                rows_sum, rows = rows_sum + feats.sum(axis=0), rows + feats.shape[0]
    notes.append(
        f"read in {-(-len(ranges) // per_segment)} segments of about {SEGMENT_S} s (a long recording)"
    )
    notes += _mark_notes(clipped_s, dropout_s)
    level = float(10 * np.log10(energy / max(samples, 1) + 1e-12))
    leak = float(np.mean(probs)) if probs else math.nan
    score = Score(probs, leak, level, band_levels(rows_sum / max(rows, 1)), notes)
    if marked_s and dropout_s == marked_s:
        score.not_heard()
    return score, out
