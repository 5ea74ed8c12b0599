"""Compare the simulator with the real PVC recordings: PSDs of leak and no-leak, measured vs synthetic.

    python -m water_edge.models.train.leak_calibration [--data DIR] [--out FILE.png]

Real data: Aghashahi, Sela & Banks, "Benchmarking dataset for leak detection and localization in water
distribution systems", Data in Brief 48 (2023) 109148, doi:10.17632/tbrnp6vrnj.1 (CC BY 4.0), read from
../shared/data/leak-pvc-hydrophone beside the checkout, or `--data DIR` (never copied into this repository;
without the five files it says where it looked and exits 2). The synthetic scene is the test
bed's: PVC, 152.4 mm, 8 kHz, one sensor, all backgrounds; the leak at -15 dB SNR. It also prints the
table the v1.1 recalibration was decided from: band levels relative to the whole band (what the detector's
features see), real no-leak vs simulated no-leak, and the leak - no-leak change, real vs simulated.
This reads the recordings' spectra only; it never runs the detector on them.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import signal

from water_edge.core.wavio import read_wav
from water_edge.models.train.leak_eval import REAL_DIR, REPO
from water_edge.sim.hydrophone import BACKGROUNDS, HydrophoneSynth, PipeScene


def band_table(x: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    f, p = signal.welch(x - x.mean(), sr, nperseg=8192)
    return f, p


TABLE_EDGES = (
    5,
    9,
    12,
    15,
    18,
    24,
    32,
    44,
    58,
    78,
    105,
    141,
    190,
    255,
    342,
    460,
    620,
    830,
    1110,
    1500,
    2000,
    3600,
)


def relative_levels(x: np.ndarray, sr: int) -> np.ndarray:
    """Band power in dB relative to the 5-3600 Hz total, in TABLE_EDGES bands (Welch, 16384 points)."""
    f, p = signal.welch(x - x.mean(), sr, nperseg=16384)
    tot = p[(f >= 5) & (f < 3600)].sum()
    return np.array(
        [10 * np.log10(p[(f >= a) & (f < b)].sum() / tot) for a, b in itertools.pairwise(TABLE_EDGES)]
    )


REAL_NAMES = ("no-leak", "orifice-leak", "gasket-leak", "circumferential-crack", "longitudinal-crack")


def relative_band_table(sims: dict[str, PipeScene], data: Path = REAL_DIR) -> None:
    """Print real vs simulated relative band levels and the leak - no-leak change."""
    real = {}
    for name in REAL_NAMES:
        x, sr = read_wav(data / f"{name}.wav")
        real[name] = relative_levels(x[:, 0].astype(np.float64), sr)
    sim = {
        k: relative_levels(HydrophoneSynth(v).render_seconds(35)[:, 0].astype(np.float64), 8000)
        for k, v in sims.items()
    }
    rows = [("real no-leak", real["no-leak"]), ("sim no-leak", sim["no leak"])]
    rows += [(f"d {k[:12]}", v - real["no-leak"]) for k, v in real.items() if k != "no-leak"]
    rows.append(("d sim leak", sim["leak"] - sim["no leak"]))
    sys.stdout.write("band from Hz  " + " ".join(f"{a:>6}" for a in TABLE_EDGES[:-1]) + "\n")
    for label, vals in rows:
        sys.stdout.write(f"{label:<13} " + " ".join(f"{v:6.1f}" for v in vals) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    prog = "python -m water_edge.models.train.leak_calibration"
    ap = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=REAL_DIR,
        metavar="DIR",
        help="the folder of the five real recordings (default: ../shared/data/leak-pvc-hydrophone beside "
        "the checkout)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=REPO / "docs" / "img" / "hydrophone_calibration.png",
        help="the figure (default: docs/img/hydrophone_calibration.png, what make eval rewrites)",
    )
    ap.add_argument("--snr", type=float, default=-15.0)
    args = ap.parse_args(argv)
    missing = [f"{name}.wav" for name in REAL_NAMES if not (args.data / f"{name}.wav").is_file()]
    if missing:
        sys.stderr.write(
            f"leak_calibration: no real PVC recordings at {args.data} (missing {', '.join(missing)}): "
            "give --data DIR, the folder of Aghashahi et al.'s WAV files\n"
        )
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    sims = {
        "no leak": PipeScene(
            "pvc", 152.4, 47.0, None, 1.0, 0.0, BACKGROUNDS, sample_rate=8000, channels=1, seed=3
        ),
        "leak": PipeScene(
            "pvc", 152.4, 47.0, 20.0, 1.0, args.snr, BACKGROUNDS, sample_rate=8000, channels=1, seed=3
        ),
    }
    for ax, (title, files) in zip(
        axes,
        (
            ("no leak", ["no-leak"]),
            ("leak", ["orifice-leak", "gasket-leak", "circumferential-crack", "longitudinal-crack"]),
        ),
        strict=True,
    ):
        for name in files:
            x, sr = read_wav(args.data / f"{name}.wav")
            f, p = band_table(x[:, 0], sr)
            ax.semilogx(f[1:], 10 * np.log10(p[1:]), lw=0.7, label=f"real: {name}")
        y = HydrophoneSynth(sims[title]).render_seconds(35)[:, 0].astype(np.float64)
        f, p = band_table(y, 8000)
        ax.semilogx(f[1:], 10 * np.log10(p[1:]), "k", lw=1.2, label="simulated (PVC DN150, 8 kHz)")
        ax.set(title=f"{title}: measured vs synthetic PSD", xlabel="Hz", xlim=(3, 4000))
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("dB re 1 FS^2/Hz")
    fig.suptitle("Hydrophone calibration against Aghashahi et al. (2023), CC BY 4.0", fontsize=9)
    fig.tight_layout()
    relative_band_table(sims, args.data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
