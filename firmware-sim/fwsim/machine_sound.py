"""The sound of a pump and its motor at a microphone, with faults: for tests and the demo.

    edge-sim machine-sound --wav pump.wav --seconds 600 [--rate 16000] [--seed 1] [--snr-db 6]
        [--fault bearing --at 300 --severity 1 --ramp 60]

A machine (`MachineScene`) turns at `rpm`; what a microphone a metre away hears, summed:

- rotation harmonics: k x the shaft frequency, k = 1..8, falling off with k (residual imbalance,
  alignment); an impeller of `blades` vanes adds the blade-pass tone and its harmonics, amplitude
  modulated at shaft rate;
- the motor: magnetic hum at twice the line frequency and its harmonics, slot tones near 1-3 kHz;
- flow noise: broadband, falling off above a few hundred hertz; a healthy bearing's faint hiss;
- the room: pink background noise (level `snr_db` below the machine) and now and then a knock
  from elsewhere.

Faults (`MACHINE_FAULTS`, severity 0..1+, scheduled with `faults.Ramp`): `bearing` (impacts at
the outer-race defect frequency ringing a 2-4 kHz structural resonance), `imbalance` (the 1x tone
up to five times louder), `misalignment` (2x and 3x up), `cavitation` (bursts of broadband noise at
1-6 kHz and crackle), `looseness` (rattle: many shaft harmonics, random impacts), `impeller`
(a damaged vane: blade-pass tone and sidebands up). Rendering is block by block with continuous
phase and filter state, deterministic for a seed; `render_seconds` gives float32 mono at full
scale +-1.
"""

from __future__ import annotations

import argparse
import math
import sys
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal, get_args

import numpy as np
import numpy.typing as npt
from scipy import signal

from water_edge.sim.faults import Ramp

MachineFaultKind = Literal["bearing", "imbalance", "misalignment", "cavitation", "looseness", "impeller"]
MACHINE_FAULTS: Final[tuple[str, ...]] = get_args(MachineFaultKind)
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class MachineScene:
    rpm: float = 2950.0
    blades: int = 6
    line_hz: float = 50.0
    level_dbfs: float = -26.0  # the machine's RMS at the microphone
    snr_db: float = 10.0  # machine over background
    bpfo_ratio: float = 3.58  # outer-race defect frequency / shaft frequency (bearing geometry)
    resonance_hz: float = 3100.0
    sample_rate: int = 16_000
    voice: int = 0  # seeds the machine's own character (harmonic mix, slot tones); noise has its own seed

    @classmethod
    def random(cls, rng: np.random.Generator, **overrides: float | int) -> MachineScene:
        scene = cls(
            rpm=float(rng.choice([1450.0, 1480.0, 2900.0, 2950.0])) * float(rng.uniform(0.98, 1.01)),
            blades=int(rng.integers(5, 9)),
            line_hz=float(rng.choice([50.0, 60.0])),
            level_dbfs=float(rng.uniform(-34.0, -20.0)),
            snr_db=float(rng.uniform(0.0, 15.0)),
            bpfo_ratio=float(rng.uniform(3.0, 3.7)),
            resonance_hz=float(rng.uniform(2000.0, 4000.0)),
            voice=int(rng.integers(2**31)),
        )
        return replace(scene, **overrides)  # type: ignore[arg-type]  # checked by the dataclass

    @property
    def shaft_hz(self) -> float:
        return self.rpm / 60.0


@dataclass(frozen=True, slots=True)
class MachineFault:
    kind: str
    ramp: Ramp

    def __post_init__(self) -> None:
        if self.kind not in MACHINE_FAULTS:
            raise ValueError(f"unknown machine fault {self.kind!r} (known: {', '.join(MACHINE_FAULTS)})")
        if not 0.0 <= self.ramp.target <= 5.0:
            raise ValueError("machine fault severity must be 0..5")


class _Noise:
    """White noise through a fixed filter, continuous across blocks."""

    def __init__(self, b: F64, a: F64, rng: np.random.Generator) -> None:
        self.b, self.a, self.rng = b, a, rng
        self.zi = np.zeros(max(len(a), len(b)) - 1)

    def block(self, n: int) -> F64:
        out, self.zi = signal.lfilter(self.b, self.a, self.rng.standard_normal(n), zi=self.zi)
        return np.asarray(out, dtype=np.float64)


def _butter(lo_hz: float, hi_hz: float | None, sample_rate: int) -> tuple[F64, F64]:
    """Second-order low-pass at `lo_hz` (no `hi_hz`) or band-pass, edges kept below Nyquist."""
    nyq = sample_rate / 2
    if hi_hz is None:
        b, a = signal.butter(2, min(0.95, lo_hz / nyq), "low")
    else:
        b, a = signal.butter(2, [min(0.9, lo_hz / nyq), min(0.95, hi_hz / nyq)], "band")
    return np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64)


def _pink() -> tuple[F64, F64]:
    # Paul Kellet's economy pink filter as an IIR (approximately -3 dB per octave)
    b = np.array([0.049922035, -0.095993537, 0.050612699, -0.004408786])
    a = np.array([1.0, -2.494956002, 2.017265875, -0.522189400])
    return b, a


@dataclass
class MachineSoundSynth:
    """Advance with `render(n)`; faults with `inject`. Same scene, seed and faults: same audio."""

    scene: MachineScene = field(default_factory=MachineScene)
    seed: int = 0
    faults: list[MachineFault] = field(default_factory=list)
    gain: float | None = None  # machine sound scale; default: the healthy machine at `level_dbfs`

    def __post_init__(self) -> None:
        sc, sr = self.scene, self.scene.sample_rate
        self._rng = np.random.default_rng(self.seed)
        rng = self._rng
        self._t = 0  # samples rendered
        voice = np.random.default_rng(sc.voice)  # the same machine whatever the noise seed
        self._harm = 1.0 / np.arange(1, 9) ** 1.3 * voice.uniform(0.5, 1.5, 8)
        self._harm_phase = voice.uniform(0, 2 * np.pi, 8)
        self._bpf_amp = float(voice.uniform(0.3, 0.8))
        self._slot_hz = voice.uniform(900.0, min(3000.0, 0.4 * sr), 3)
        self._slot_amp = voice.uniform(0.02, 0.08, 3)
        self._flow = _Noise(*_butter(600.0, None, sr), rng)
        self._hiss = _Noise(*_butter(2500.0, 6000.0, sr), rng)
        self._cav = _Noise(*_butter(1000.0, 6000.0, sr), rng)
        self._room = _Noise(*_pink(), rng)
        # the bearing's structural resonance, rung by each impact
        w0 = 2 * np.pi * min(sc.resonance_hz, 0.45 * sr) / sr
        r = math.exp(-2 * np.pi * 250.0 / sr)  # ~250 Hz bandwidth
        self._ring = (np.array([1.0 - r]), np.array([1.0, -2 * r * math.cos(w0), r * r]))
        self._ring_zi = np.zeros(2)
        self._next_impact = 0.0
        self._burst = 0.0
        if self.gain is None:  # the healthy machine's level, so a fault changes it as it would
            twin = MachineSoundSynth(self.scene, self.seed, [], gain=1.0)
            probe = twin._machine(sc.sample_rate, 0.0)
            self.gain = 10 ** (sc.level_dbfs / 20) / max(1e-12, float(np.sqrt(np.mean(probe**2))))

    def inject(
        self,
        kind: str,
        *,
        severity: float = 1.0,
        at_s: float = 0.0,
        ramp_s: float = 0.0,
        duration_s: float | None = None,
    ) -> MachineFault:
        fault = MachineFault(kind, Ramp(at_s, severity, ramp_s, duration_s))
        self.faults.append(fault)
        return fault

    def severity(self, kind: str, t: float) -> float:
        return sum(f.ramp.at(t) for f in self.faults if f.kind == kind)

    def _machine(self, n: int, t0: float) -> F64:
        sc, sr, rng = self.scene, self.scene.sample_rate, self._rng
        t = (self._t + np.arange(n)) / sr
        fr = sc.shaft_hz
        imb = self.severity("imbalance", t0)
        mis = self.severity("misalignment", t0)
        loose = self.severity("looseness", t0)
        imp = self.severity("impeller", t0)
        cav = self.severity("cavitation", t0)
        bear = self.severity("bearing", t0)
        amps = self._harm.copy()
        amps[0] *= 1.0 + 4.0 * imb
        amps[1] *= 1.0 + 3.0 * mis
        amps[2] *= 1.0 + 2.0 * mis
        amps[3:] *= 1.0 + 3.0 * loose
        out = np.zeros(n)
        for k in range(8):
            f = (k + 1) * fr
            if f < 0.45 * sr:
                out += amps[k] * np.sin(2 * np.pi * f * t + self._harm_phase[k])
        bpf = sc.blades * fr
        mod = 1.0 + (0.2 + 0.8 * imp) * np.sin(2 * np.pi * fr * t)
        for k, a in ((1, 1.0), (2, 0.5), (3, 0.25)):
            if k * bpf < 0.45 * sr:
                out += self._bpf_amp * (1.0 + 2.0 * imp) * a * mod * np.sin(2 * np.pi * k * bpf * t)
        for k, a in ((2, 0.5), (4, 0.15), (6, 0.05)):
            out += a * np.sin(2 * np.pi * k * sc.line_hz * t)
        for f, a in zip(self._slot_hz, self._slot_amp, strict=True):
            out += a * np.sin(2 * np.pi * f * t)
        out += 0.6 * self._flow.block(n) + 0.05 * self._hiss.block(n)
        if bear > 0:
            out += self._impacts(n, sc.bpfo_ratio * fr, 8.0 * bear)
        if loose > 0:
            out += self._impacts(n, fr * rng.uniform(0.9, 1.1), 3.0 * loose, jitter=0.3)
        if cav > 0:
            env = np.empty(n)
            for i in range(0, n, 160):  # bursts change every 10 ms
                self._burst = max(0.0, 0.8 * self._burst + cav * float(rng.exponential(0.5)))
                env[i : i + 160] = self._burst
            out += 1.2 * env * self._cav.block(n)
            crackle = rng.random(n) < cav * 200.0 / sr
            out += crackle * rng.standard_normal(n) * 2.0 * cav
        return out

    def _impacts(self, n: int, rate_hz: float, amp: float, jitter: float = 0.02) -> F64:
        """Impacts at `rate_hz` (with slip) ringing the resonance."""
        sr = self.scene.sample_rate
        pulses = np.zeros(n)
        pos = self._next_impact
        while pos < n:
            pulses[int(pos)] += amp * float(self._rng.uniform(0.6, 1.4))
            pos += sr / rate_hz * (1.0 + jitter * float(self._rng.standard_normal()))
        self._next_impact = pos - n
        b, a = self._ring
        out, self._ring_zi = signal.lfilter(b, a, pulses, zi=self._ring_zi)
        return np.asarray(out, dtype=np.float64) * 40.0

    def render(self, n: int) -> npt.NDArray[np.float32]:
        sc = self.scene
        t0 = self._t / sc.sample_rate
        machine = self._machine(n, t0)
        room = self._room.block(n)
        room *= 10 ** ((sc.level_dbfs - sc.snr_db) / 20) / 0.05  # pink filter output RMS ~0.05
        knocks = self._rng.random(n) < 0.3 / sc.sample_rate  # a knock every few seconds somewhere
        room += knocks * self._rng.standard_normal(n) * 10 ** ((sc.level_dbfs - 6) / 20) * 4
        self._t += n
        out = machine * (self.gain or 1.0) + room
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def render_seconds(self, seconds: float, block_s: float = 1.0) -> npt.NDArray[np.float32]:
        sr = self.scene.sample_rate
        total = round(seconds * sr)
        step = max(1, round(block_s * sr))
        parts = [self.render(min(step, total - i)) for i in range(0, total, step)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def write_wav(path: Path, samples: npt.NDArray[np.float32], sample_rate: int) -> None:
    """16-bit PCM mono WAV (what a recorder or `arecord` writes)."""
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-sim machine-sound", description=__doc__.split("\n\n")[0])
    ap.add_argument("--wav", type=Path, required=True, help="output file (16-bit PCM mono)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=int, default=16_000, help="sample rate (Hz)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rpm", type=float, default=None, help="default: drawn from the seed")
    ap.add_argument("--snr-db", type=float, default=None, help="machine over background (default: drawn)")
    ap.add_argument("--fault", choices=MACHINE_FAULTS, default=None)
    ap.add_argument("--at", type=float, default=0.0, help="fault onset, seconds into the file")
    ap.add_argument("--severity", type=float, default=1.0)
    ap.add_argument("--ramp", type=float, default=0.0, help="seconds to reach the severity")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.seconds <= 24 * 3600 or not 1000 <= args.rate <= 192_000:
        print("edge-sim machine-sound: --seconds in (0, 86400], --rate in [1000, 192000]", file=sys.stderr)  # noqa: T201 - CLI
        return 2
    overrides = {"sample_rate": args.rate}
    if args.rpm is not None:
        overrides["rpm"] = args.rpm
    if args.snr_db is not None:
        overrides["snr_db"] = args.snr_db
    scene = MachineScene.random(np.random.default_rng(args.seed), **overrides)
    synth = MachineSoundSynth(scene, seed=args.seed)
    if args.fault:
        try:
            synth.inject(args.fault, severity=args.severity, at_s=args.at, ramp_s=args.ramp)
        except ValueError as exc:
            print(f"edge-sim machine-sound: {exc}", file=sys.stderr)  # noqa: T201 - CLI
            return 2
    samples = synth.render_seconds(args.seconds)
    try:
        write_wav(args.wav, samples, args.rate)
    except OSError as exc:
        print(f"edge-sim machine-sound: {args.wav}: {exc.strerror or exc}", file=sys.stderr)  # noqa: T201 - CLI
        return 1
    fault = args.fault or "none"
    print(f"{args.wav}  {args.seconds:g} s at {args.rate} Hz  {scene.rpm:.0f} rpm  fault {fault}")  # noqa: T201 - CLI
    clipped = float(np.mean(np.abs(samples) >= 1.0))
    if clipped:
        # As a microphone's input stage would: the agent scores such clips but never learns or keeps
        # them (docs/machine-sound.md), so say so rather than let a replay miss them unexplained.
        print(  # noqa: T201 - CLI
            f"edge-sim machine-sound: warning: {clipped:.2%} of the samples clipped at full scale "
            "(a loud fault or scene): the agent scores such clips but does not keep them; a lower "
            "--severity keeps the sound within range",
            file=sys.stderr,
        )
    return 0
