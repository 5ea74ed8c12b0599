"""Machine-sound benchmark: what one microphone costs the gateway (clip features + scoring, as a share
of one core) and how long a calibration on 100 clips takes (and the peak it allocates)."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np

from water_edge.models.machine_sound.detector import calibrate
from water_edge.models.machine_sound.features import CLIP_S, clip_features
from water_edge.models.machine_sound.prior import load_prior
from water_edge.sim.machine_sound import MachineScene, MachineSoundSynth


def _cpu_per_clip(clips: list[np.ndarray], rate: int, cal: object) -> float:
    """CPU seconds (this process) per clip for features + score."""
    t0 = time.process_time()
    for x in clips:
        cal.score(clip_features(x, rate)[None, :])  # type: ignore[attr-defined]
    return (time.process_time() - t0) / len(clips)


def run(tmpdir: Path) -> list[dict[str, object]]:
    scene = MachineScene.random(np.random.default_rng(1), snr_db=6.0)
    synth = MachineSoundSynth(scene, seed=1)
    clips = [synth.render_seconds(CLIP_S) for _ in range(110)]
    features = np.vstack([clip_features(x) for x in clips[:100]])

    tracemalloc.start()
    t0 = time.perf_counter()
    cal = calibrate(features, prior=load_prior("pump"))  # with the prior: the same cost as without
    calib_s = time.perf_counter() - t0
    peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    cpu16 = _cpu_per_clip(clips[100:], 16_000, cal)
    scene48 = MachineScene.random(np.random.default_rng(1), snr_db=6.0, sample_rate=48_000)
    synth48 = MachineSoundSynth(scene48, seed=1)
    clips48 = [synth48.render_seconds(CLIP_S) for _ in range(5)]
    cpu48 = _cpu_per_clip(clips48, 48_000, cal)
    return [
        {
            "name": "machine_sound.cpu_one_microphone_16khz",
            "value": round(100 * cpu16 / CLIP_S, 2),
            "unit": "% of one core",
            "target": "<= 5 % (features + scoring, one 10 s clip every 10 s)",
        },
        {
            "name": "machine_sound.cpu_one_microphone_48khz",
            "value": round(100 * cpu48 / CLIP_S, 2),
            "unit": "% of one core",
            "target": "<= 5 % (resampled to 16 kHz first)",
        },
        {
            "name": "machine_sound.features_and_score_per_clip",
            "value": round(1000 * cpu16, 1),
            "unit": "ms CPU",
            "target": "reference",
        },
        {
            "name": "machine_sound.calibrate_100_clips",
            "value": round(calib_s, 3),
            "unit": "s",
            "target": "<= 10 s",
        },
        {
            "name": "machine_sound.calibrate_100_clips_peak_alloc",
            "value": round(peak_mib, 1),
            "unit": "MiB",
            "target": "reference",
        },
    ]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for row in run(Path(tmp)):
            print(row)
