"""Clips from the audio driver's overlapping windows: exactly the device's samples, in order, averaged
over the chosen channels; lost audio starts a new clip instead of splicing across the gap."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from water_edge.models.machine_sound.clips import NS, ClipAssembler

RATE = 8000


@dataclass
class Window:
    start_ts_ns: int
    sample_rate: int
    samples: np.ndarray
    channel_names: tuple[str, ...] = ("A", "B")


def windows(x: np.ndarray, window_s: float, hop_s: float, t0: int = 10**18) -> list[Window]:
    n, hop = round(window_s * RATE), round(hop_s * RATE)
    return [
        Window(t0 + i * NS // RATE, RATE, x[i : i + n].astype(np.float32))
        for i in range(0, len(x) - n + 1, hop)
    ]


def test_overlapping_windows_give_each_sample_once_and_clips_back_to_back() -> None:
    x = np.random.default_rng(0).standard_normal((int(7.5 * RATE), 2))
    asm = ClipAssembler(clip_s=2.0)
    got = [clip for w in windows(x, 1.0, 0.5) for clip in asm.feed(w)]
    assert len(got) == 3
    mono = x.mean(axis=1).astype(np.float32)
    for k, clip in enumerate(got):
        assert clip.sample_rate == RATE
        np.testing.assert_allclose(clip.samples, mono[k * 2 * RATE : (k + 1) * 2 * RATE], atol=1e-6)
        assert clip.start_ts_ns == 10**18 + k * 2 * NS
    assert asm.gaps == 0


def test_one_channel_can_be_chosen_and_a_missing_one_is_named() -> None:
    x = np.random.default_rng(1).standard_normal((2 * RATE, 2))
    asm = ClipAssembler(clip_s=1.0, channels=["B"])
    got = [c for w in windows(x, 0.5, 0.5) for c in asm.feed(w)]
    np.testing.assert_allclose(got[0].samples, x[:RATE, 1].astype(np.float32))
    with pytest.raises(ValueError, match="channels C not in the device's A, B"):
        ClipAssembler(clip_s=1.0, channels=["C"]).feed(windows(x, 0.5, 0.5)[0])


def test_lost_audio_starts_a_new_clip() -> None:
    x = np.random.default_rng(2).standard_normal((6 * RATE, 2))
    ws = windows(x, 1.0, 1.0)
    asm = ClipAssembler(clip_s=2.0)
    got = []
    for k, w in enumerate(ws):
        if k == 1:  # the second second never arrived
            continue
        got += asm.feed(w)
    assert asm.gaps == 1  # the clip that had the first second is abandoned
    assert [c.start_ts_ns for c in got] == [10**18 + 2 * NS, 10**18 + 4 * NS]
