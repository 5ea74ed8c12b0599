"""Leak pipeline cost on this machine: inference per 2 s window, and CPU per 16 kHz hydrophone channel.

The pipeline figure runs `LeakProcessor` (resample to 8 kHz, band features, LiteRT inference in a
worker thread, smoothing and hysteresis) over 120 s of simulated 16 kHz audio fed in 0.5 s windows,
and divides the process CPU time by the audio duration. Prints figures, never fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from water_edge.core.reading import Event
from water_edge.models.leak import features
from water_edge.models.leak.detector import LeakProcessor, LeakScorer
from water_edge.sim.hydrophone import BACKGROUNDS, HydrophoneSynth, PipeScene

AUDIO_S = 120


@dataclass
class _Window:
    start_ts_ns: int
    sample_rate: int
    samples: Any
    channel_names: tuple[str, ...]


def run(tmpdir: Path) -> list[dict[str, Any]]:
    scorer = LeakScorer()
    audio = HydrophoneSynth(
        PipeScene("ductile_iron", 150.0, 100.0, 40.0, 1.0, 0.0, BACKGROUNDS, channels=1)
    ).render_seconds(AUDIO_S)
    canon, _ = features.prepare(audio, 16000)
    row = features.window_features(canon[: features.WINDOW])[None, :]
    for _ in range(20):
        scorer.probabilities(row)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        scorer.probabilities(row)
    infer_ms = (time.perf_counter() - t0) / n * 1000
    t0 = time.perf_counter()
    for _ in range(200):
        features.window_features(canon[: features.WINDOW])
    feat_ms = (time.perf_counter() - t0) / 200 * 1000

    async def windows() -> AsyncIterator[_Window]:
        step = 8000
        for i in range(0, audio.shape[0] - step + 1, step):
            yield _Window(i * 62_500, 16000, audio[i : i + step], ("A",))

    async def emit(_: Event) -> None:
        return None

    proc = LeakProcessor(scorer)
    cpu0 = time.process_time()
    asyncio.run(proc.run(windows(), emit))
    cpu_pct = (time.process_time() - cpu0) / AUDIO_S * 100
    return [
        {
            "name": "leak inference per 2 s window (LiteRT)",
            "value": round(infer_ms, 4),
            "unit": "ms",
            "target": "<= 5",
        },
        {"name": "leak features per 2 s window", "value": round(feat_ms, 3), "unit": "ms", "target": ""},
        {
            "name": "leak pipeline CPU per 16 kHz channel",
            "value": round(cpu_pct, 3),
            "unit": "% of one core",
            "target": "<= 3",
        },
    ]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for r in run(Path(d)):
            print(r)
