"""Feature tables for training and evaluating the leak detector, from `edge-sim dataset leak` clips.

Clips are rendered exactly as the dataset command writes them (same plan, same 16-bit PCM), but in
memory, so a 20 000-clip training run does not need gigabytes of WAVs. `from_folder` reads a dataset
that was written to disk instead. Each clip channel gives one feature row per 2 s window (hop 1 s).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.io import wavfile

from water_edge.models.leak import features
from water_edge.sim.dataset_leak import ClipSpec, plan, render_clip

FloatArray = npt.NDArray[np.float64]


@dataclass
class Table:
    """Feature rows `x`, labels `y`, and per-row metadata (the clip's index row)."""

    x: FloatArray
    y: npt.NDArray[np.int64]
    meta: list[dict[str, Any]]


def _rows(pcm: npt.NDArray[Any], sample_rate: int, channels: int) -> list[FloatArray]:
    out = []
    for ch in range(channels):
        canon, _ = features.prepare(pcm[:, ch].astype(np.float64) / 32768.0, sample_rate)
        out.append(features.windows(canon, hop_s=1.0))
    return out


def render_table(seed: int, clips: int, split: str, eval_fraction: float = 0.25, channels: int = 2) -> Table:
    """Render the `split` clips of dataset (seed, clips) and featurise them."""
    specs: list[ClipSpec] = [s for s in plan(seed, clips, eval_fraction) if s.split == split]
    xs, ys, meta = [], [], []
    for spec in specs:
        pcm, _ = render_clip(spec)
        row = spec.row()
        for ch, f in enumerate(_rows(pcm, spec.scene.sample_rate, channels)):
            xs.append(f)
            ys.extend([spec.label] * len(f))
            meta.extend([{**row, "channel": ch}] * len(f))
    return Table(np.concatenate(xs), np.asarray(ys, dtype=np.int64), meta)


def from_folder(folder: Path, split: str, channels: int = 2) -> Table:
    """Featurise the clips of one split of a dataset written by `edge-sim dataset leak`."""
    xs, ys, meta = [], [], []
    with (folder / "index.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["split"] != split:
                continue
            sr, pcm = wavfile.read(folder / row["file"])
            pcm2 = pcm if pcm.ndim == 2 else pcm[:, None]
            for ch, f in enumerate(_rows(pcm2, sr, min(channels, pcm2.shape[1]))):
                xs.append(f)
                ys.extend([int(row["label"])] * len(f))
                meta.extend([{**row, "channel": ch}] * len(f))
    if not xs:
        raise ValueError(f"{folder}: no clips in split {split!r}")
    return Table(np.concatenate(xs), np.asarray(ys, dtype=np.int64), meta)
