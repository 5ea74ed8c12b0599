"""`edge-sim dataset leak`: labelled hydrophone clips for training and evaluating the leak detector.

Each clip is a 2-channel 16-bit WAV (channel 0 = sensor A) rendered by `fwsim.hydrophone` from a
scene drawn at random across pipe materials, diameters, sensor spacings, leak positions and sizes,
SNRs (-25..+20 dB; v1.0: -15..+20) and background mixes; about half the clips hold a leak. `index.csv` and
`index.json` list every clip with its label and scene. The split is by seed: train and eval clips
come from two disjoint random streams of the dataset seed, so no eval clip's scene or noise is ever
seen in training, and the same (seed, clips) always writes the same files.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from scipy.io import wavfile

from water_edge.sim import pipes
from water_edge.sim.hydrophone import BACKGROUNDS, HydrophoneSynth, PipeScene

SPLITS: Final = {"train": 0, "eval": 1}
_DIAMETERS: Final = {
    True: (100.0, 150.0, 200.0, 300.0, 400.0, 600.0),
    False: (63.0, 110.0, 152.4, 200.0, 315.0),
}


@dataclass(frozen=True, slots=True)
class ClipSpec:
    """One clip: where it goes, its label and the scene that renders it."""

    file: str
    split: str
    label: int
    scene: PipeScene
    seconds: float

    def row(self) -> dict[str, Any]:
        sc = self.scene
        delays = sc.delays_s()
        return {
            "file": self.file, "split": self.split, "label": self.label, "material": sc.material,
            "diameter_mm": sc.diameter_mm, "spacing_m": round(sc.spacing_m, 3),
            "leak_position_m": None if sc.leak_position_m is None else round(sc.leak_position_m, 3),
            "leak_size": round(sc.leak_size, 3), "snr_db": round(sc.snr_db, 2),
            "backgrounds": "+".join(sc.backgrounds), "wave_speed_m_s": round(sc.wave_speed, 2),
            "tdoa_s": None if not delays else round(delays[0] - delays[1], 7),
            "sample_rate": sc.sample_rate, "channels": sc.channels, "seconds": self.seconds, "seed": sc.seed,
        }  # fmt: skip


def draw_scene(
    rng: np.random.Generator,
    clip_seed: int,
    leak: bool,
    sample_rate: int = 16000,
    snr_range: tuple[float, float] = (-25.0, 20.0),
) -> PipeScene:
    """A random but plausible scene; `leak` decides whether it holds a leak."""
    material = str(rng.choice(sorted(pipes.MATERIALS)))
    metal = pipes.MATERIALS[material].metal
    diameter = float(rng.choice(_DIAMETERS[metal]))
    spacing = float(rng.uniform(80.0, 300.0) if metal else rng.uniform(30.0, 150.0))
    backgrounds = tuple(b for b in BACKGROUNDS if rng.random() < 0.6) or (str(rng.choice(BACKGROUNDS)),)
    position = float(rng.uniform(0.05, 0.95) * spacing)
    size = float(math.exp(rng.uniform(math.log(0.2), math.log(3.0))))
    snr = float(rng.uniform(*snr_range))
    return PipeScene(
        material,
        diameter,
        spacing,
        position if leak else None,
        size,
        snr,
        backgrounds,
        sample_rate=sample_rate,
        channels=2,
        seed=clip_seed,
    )


def plan(
    seed: int, clips: int, eval_fraction: float = 0.25, seconds: float = 4.0, sample_rate: int = 16000
) -> list[ClipSpec]:
    """The clips a dataset of this seed and size holds, without rendering them."""
    n_eval = round(clips * eval_fraction)
    out: list[ClipSpec] = []
    for split, count in (("train", clips - n_eval), ("eval", n_eval)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split]]))
        for i in range(count):
            leak = bool(rng.random() < 0.5)
            clip_seed = int(rng.integers(0, 2**31 - 1))
            scene = draw_scene(rng, clip_seed, leak, sample_rate)
            name = f"{split}/{split}_{i:05d}_{'leak' if leak else 'noleak'}.wav"
            out.append(ClipSpec(name, split, int(leak), scene, seconds))
    return out


def render_clip(spec: ClipSpec) -> tuple[np.ndarray[Any, np.dtype[np.int16]], float]:
    """16-bit PCM of a clip and the gain (dB) applied so its peaks fit."""
    x = HydrophoneSynth(spec.scene).render_seconds(spec.seconds)
    peak = float(np.max(np.abs(x))) or 1.0
    gain = min(1.0, 0.98 / peak)
    pcm = np.round(x * gain * 32767).astype(np.int16)
    return pcm, 20 * math.log10(gain)


def write(out: Path, specs: list[ClipSpec], seed: int) -> dict[str, Any]:
    rows = []
    for split in {s.split for s in specs}:
        (out / split).mkdir(parents=True, exist_ok=True)
    every = max(1, len(specs) // 10)
    for n, spec in enumerate(specs, 1):
        if n % every == 0 or n == len(specs):  # progress on stderr; stdout keeps the summary
            sys.stderr.write(f"edge-sim dataset leak: {n:,}/{len(specs):,} clips\n")
        pcm, gain_db = render_clip(spec)
        wavfile.write(out / spec.file, spec.scene.sample_rate, pcm)
        rows.append({**spec.row(), "gain_db": round(gain_db, 2)})
    with (out / "index.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "generator": "edge-sim dataset leak",
        "seed": seed,
        "clips": rows,
        "scene_fields": list(asdict(specs[0].scene)) if specs else [],
    }
    (out / "index.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to write clips and index into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips", type=int, default=400, help="total clips (train + eval)")
    parser.add_argument("--eval-fraction", type=float, default=0.25)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    parser.add_argument("--sample-rate", type=int, default=16000)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.clips <= 1_000_000:
        sys.stderr.write("edge-sim dataset leak: --clips must be 1..1000000\n")
        return 2
    if not 0.0 <= args.eval_fraction < 1.0 or not 0.5 <= args.seconds <= 600:
        sys.stderr.write("edge-sim dataset leak: --eval-fraction must be 0..1 and --seconds 0.5..600\n")
        return 2
    t0 = time.perf_counter()
    try:
        specs = plan(args.seed, args.clips, args.eval_fraction, args.seconds, args.sample_rate)
        write(args.out, specs, args.seed)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"edge-sim dataset leak: {exc}\n")
        return 2
    took = time.perf_counter() - t0
    audio_s = sum(s.seconds for s in specs)
    n_eval = sum(s.split == "eval" for s in specs)
    sys.stdout.write(
        f"wrote {len(specs)} clips ({len(specs) - n_eval} train, {n_eval} eval) to {args.out} "
        f"in {took:.1f} s ({audio_s / max(took, 1e-9):.0f}x real time)\n"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-sim dataset leak", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
