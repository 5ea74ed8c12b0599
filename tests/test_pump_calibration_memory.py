"""A pump calibration holds a bounded amount of memory whatever the history it is asked to learn
from, and learns what it learnt before.

The gateway's agent runs under `MemoryMax=256M`; a day's calibration used to reach it and the
signed command's default range, all of a 14-day history, took ~1 GB. Now: the history is read
into float32 arrays a block of rows at a time, a range of more than `MAX_CALIBRATION_ROWS` rows is
thinned to contiguous blocks spread over it, the command's default range is the last
`auto_hours`, and the memory is given back afterwards. Memory itself is measured outside the
tests (docs/pump-anomaly.md has the figures); these prove what a user relies on: the same
calibration below the cap, a close one above it, the stored values read back exactly, the range
the command takes.

Data: four signals of a pump following a daily demand cycle, at 1 s, generated here with fixed
seeds; on the second day the demand, and the speed to the rpm, hold still for an hour (a speed
at its limit), the longest run of identical readings the frozen test must learn.
"""

from __future__ import annotations

import ctypes
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from water_edge.core.instants import iso
from water_edge.models.pump.config import PumpModelConfig
from water_edge.models.pump.detector import (
    CLIP,
    DEFAULT_QUANTILE,
    GLITCH_PCT,
    LEVEL_WINDOW,
    RESIDUAL_FLOOR,
    calibrate,
    frozen_limits,
    level_stats,
    scorer_scores,
    threshold_margin,
    trailing_mean,
)
from water_edge.models.pump.store import NS, CalibrationStore, FeatureHistory
from water_edge.models.runtime import Model, load_model

pytestmark = pytest.mark.slow

MANIFEST = Path(__file__).resolve().parents[1] / "models" / "pump" / "pump_scorer.json"
SIGNALS = ["motor_current", "discharge_pressure", "flow", "speed"]
QUANTUM = np.array([0.1, 0.01, 0.1, 1.0])  # as a PLC scales them
DAY = 86_400
HOLD = slice(DAY + 3 * 3600, DAY + 4 * 3600)  # the hour the demand and the speed hold still
T0 = 1_772_323_200 * NS  # 2026-03-01T00:00Z


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model(MANIFEST)


def duty(seconds: int, seed: int) -> np.ndarray:
    """(seconds, 4) rows at 1 s from T0: current, pressure, flow and speed following the demand
    (a daily cycle and a 90-minute one), noise, PLC resolution, 1 % of cells missing."""
    rng = np.random.default_rng(seed)
    t = np.arange(seconds, dtype=np.float64)
    demand = 0.6 + 0.3 * np.sin(2 * np.pi * t / DAY) + 0.05 * np.sin(2 * np.pi * t / 5400)
    demand[HOLD] = demand[HOLD][:1]
    noise = rng.standard_normal((seconds, 4))
    x: np.ndarray = np.column_stack(
        [
            20 + 30 * demand**1.5 + 0.4 * noise[:, 0],
            4 + 2 * demand**2 + 0.05 * noise[:, 1],
            100 * demand + 1.5 * noise[:, 2],
            1450 * (0.7 + 0.3 * demand) + 10 * noise[:, 3],
        ]
    )
    x = np.round(x / QUANTUM) * QUANTUM
    x[HOLD, 3] = x[HOLD][:1, 3]
    x[rng.random(x.shape) < 0.01] = np.nan
    return x


def seed_history(state_dir: Path, x: np.ndarray) -> None:
    """`x` into the pump's history as the processor stores it, a row a second from T0."""
    with FeatureHistory.for_pump(state_dir, "P1", SIGNALS, 14.0) as history:
        for lo in range(0, len(x), 20_000):
            part = x[lo : lo + 20_000]
            history.append([(T0 + (lo + i) * NS, row) for i, row in enumerate(part)])


def config(**calibration: Any) -> PumpModelConfig:
    return PumpModelConfig.model_validate(
        {"name": "P1", "signals": {role: f"plc/{role}" for role in SIGNALS}, "calibration": calibration}
    )


def stored(x: np.ndarray) -> np.ndarray:
    """What the history keeps of `x`: float32."""
    return x.astype(np.float32).astype(np.float64)


def carried_forward(z: np.ndarray) -> np.ndarray:
    """A missing cell takes the last value seen in its column (0 before any)."""
    out = z.copy()
    for col in out.T:
        seen = np.where(np.isfinite(col), np.arange(len(col)), 0)
        np.maximum.accumulate(seen, out=seen)
        col[:] = np.nan_to_num(col[seen], nan=0.0, posinf=0.0, neginf=0.0)
    return out


def reference_ridge(z: np.ndarray, lam: float) -> np.ndarray:
    """The relations as they were fitted before: the (n, 1+2C) basis built whole, and per channel
    a copy of it without that channel's columns."""
    n, n_ch = z.shape
    phi = np.hstack([np.ones((n, 1)), z, z * z])
    coef = np.zeros((n_ch, phi.shape[1]))
    for c in range(n_ch):
        keep = np.ones(phi.shape[1], dtype=bool)
        keep[1 + c] = keep[1 + n_ch + c] = False
        a = phi[:, keep]
        reg = lam * np.eye(a.shape[1])
        reg[0, 0] = 0.0
        coef[c, keep] = np.linalg.solve(a.T @ a + reg, a.T @ z[:, c])
    return coef


def reference_calibration(x: np.ndarray, model: Model, window: int = 32) -> dict[str, Any]:
    """A calibration of every row of `x` computed as before, on whole (n, C) arrays: every signal
    varies, one contiguous stretch."""
    lo, q25, q75, hi = np.nanpercentile(x, [GLITCH_PCT, 25, 75, 100 - GLITCH_PCT], axis=0)
    center = np.nanmedian(x, axis=0)
    scale = np.maximum(np.nanstd(np.clip(x, lo, hi), axis=0), (q75 - q25) / 1.349)
    z = np.clip(carried_forward((x - center) / scale), -CLIP, CLIP)
    n = len(z)
    oof = np.empty_like(z)
    bounds = np.linspace(0, n, 6).astype(int)
    for a, b in itertools.pairwise(bounds):
        coef_k = reference_ridge(np.vstack([z[:a], z[b:]]), 1.0 + 0.01 * (n - (b - a)))
        oof[a:b] = z[a:b] - np.hstack([np.ones((b - a, 1)), z[a:b], z[a:b] ** 2]) @ coef_k.T
    med = np.median(oof, axis=0)
    mad = 1.4826 * np.median(np.abs(oof - med), axis=0)
    res_scale = np.maximum(np.maximum(mad, 0.5 * oof.std(axis=0)), RESIDUAL_FLOOR)
    r = np.clip(oof / res_scale, -CLIP, CLIP)
    factor = threshold_margin(n, window)
    settled = trailing_mean(r, LEVEL_WINDOW)[window:]
    mid = np.median(settled, axis=0)
    sd = np.maximum.reduce(
        [
            1.4826 * np.median(np.abs(settled - mid), axis=0),
            0.5 * settled.std(axis=0),
            np.full(z.shape[1], 1.0 / np.sqrt(LEVEL_WINDOW)),
        ]
    )
    level = level_stats(r, LEVEL_WINDOW, mid, sd).max(axis=1)[window:]
    scores = scorer_scores(model, z, r, window).max(axis=1)[window:]
    return {
        "center": center,
        "scale": scale,
        "coef": reference_ridge(z, 1.0 + 0.01 * n),
        "residual_scale": res_scale,
        "level_mid": mid,
        "level_sd": sd,
        "level_threshold": factor * float(np.quantile(level, DEFAULT_QUANTILE)),
        "scorer_threshold": factor * float(np.quantile(scores, DEFAULT_QUANTILE)),
        "frozen": frozen_limits(x),
    }


def test_history_reads_back_exactly_the_stored_values_a_block_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    rng = np.random.default_rng(5)
    n = 10_001  # more than one block of `READ_ROWS`
    x = rng.standard_normal((n, 3)) * np.array([1e-6, 1.0, 1e6])
    x[::7, 1] = np.nan
    x[5] = [3.4e38, -0.0, 1e-45]  # the float32 extremes: largest, signed zero, subnormal
    ts = T0 + np.arange(n, dtype=np.int64) * NS
    writer = FeatureHistory(path, ["a", "b", "c"], history_days=30.0)
    writer.append(list(zip(ts.tolist(), x, strict=True)))
    want = x.astype(np.float32)
    reader = FeatureHistory(path, ["a", "b", "c"], history_days=30.0, reset_on_change=False)

    got_ts, got = reader.read()
    np.testing.assert_array_equal(got_ts, ts)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want.astype(np.float64))  # bit for bit, NaN where NaN
    assert np.signbit(got[5, 1])

    # A scan is one snapshot: rows another connection appends meanwhile are not in it.
    with reader.scan(rows=333) as scan:
        pieces = iter(scan)
        first_ts, first = next(pieces)
        writer.append([(int(ts[-1]) + (i + 1) * NS, np.zeros(3)) for i in range(50)])
        rest = list(pieces)
    assert scan.count == n
    assert [len(t) for t, _ in [(first_ts, first), *rest]] == [333] * 30 + [11]
    assert all(v.dtype == np.float32 for _, v in rest)
    np.testing.assert_array_equal(np.concatenate([first, *(v for _, v in rest)]), want)
    np.testing.assert_array_equal(np.concatenate([first_ts, *(t for t, _ in rest)]), ts)
    assert len(reader.read()[0]) == n + 50

    with reader.scan(int(ts[100]), int(ts[199])) as scan:
        assert scan.count == 100
        np.testing.assert_array_equal(np.concatenate([v for _, v in scan]), want[100:200])
    reader.close()
    writer.close()


def test_calibration_blocks_spread_over_the_range_and_over_the_day() -> None:
    from water_edge.models.pump.detector import (
        CALIBRATION_BLOCK_ROWS,
        MAX_CALIBRATION_ROWS,
        calibration_blocks,
    )

    assert MAX_CALIBRATION_ROWS > DAY + 1  # the default calibration, a day at 1 s, is not thinned
    assert calibration_blocks(DAY + 1) == [(0, DAY + 1)]
    assert calibration_blocks(0) == []
    for n in (MAX_CALIBRATION_ROWS + 1, 3 * DAY + 1, 14 * DAY + 1, 200 * DAY):
        blocks = calibration_blocks(n)
        lengths = {b - a for a, b in blocks}
        assert len(lengths) == 1
        assert lengths.pop() >= CALIBRATION_BLOCK_ROWS
        assert sum(b - a for a, b in blocks) <= MAX_CALIBRATION_ROWS
        assert blocks[0][0] == 0
        assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(blocks))  # in order, apart
        assert blocks[-1][1] <= n
        part = n / len(blocks)  # one block in each equal part of the range
        assert all(int(i * part) <= a and b <= int((i + 1) * part) for i, (a, b) in enumerate(blocks))
    # Parts exactly a day long: evenly spaced blocks would all start at one time of day.
    starts = sorted(a % DAY for a, _ in calibration_blocks(200 * DAY))
    gaps = np.diff([*starts, starts[0] + DAY])
    assert gaps.max() < 3600  # every hour of the day has blocks starting in it


def test_below_the_cap_the_calibration_is_that_of_every_row_as_before(tmp_path: Path, model: Model) -> None:
    from water_edge.models.pump.calibration import calibrate_pump

    x = duty(2 * 3600 + 1, seed=1)
    seed_history(tmp_path, x)
    with FeatureHistory.existing(tmp_path, "P1", SIGNALS, 14.0) as history:
        rows = history.calibration_rows()
    assert rows.values.dtype == np.float32
    np.testing.assert_array_equal(rows.values, x.astype(np.float32))  # every row, as stored
    assert (rows.starts, rows.in_range) == ([0], len(x))
    assert (rows.first_ns, rows.last_ns) == (T0, T0 + 2 * 3600 * NS)
    assert rows.frozen.limits() == frozen_limits(stored(x))

    cal = calibrate_pump(config(), tmp_path, None, None)
    want = reference_calibration(stored(x), model)
    assert cal.n_samples == len(x)
    assert (cal.from_ts, cal.to_ts) == (iso(T0), iso(T0 + 2 * 3600 * NS))
    for key in ("center", "scale", "coef", "residual_scale", "level_mid", "level_sd"):
        np.testing.assert_allclose(getattr(cal, key), want[key], rtol=1e-7, atol=1e-12, err_msg=key)
    assert cal.level_threshold == pytest.approx(want["level_threshold"], rel=1e-7)
    assert cal.scorer_threshold == pytest.approx(want["scorer_threshold"], rel=1e-6)
    assert (cal.frozen_limit, cal.repeat_share, cal.longest_run) == want["frozen"]


def test_a_long_history_calibrates_on_a_bounded_number_of_rows_spread_over_it(
    tmp_path: Path, model: Model
) -> None:
    """Three days at 1 s (259,201 rows): the calibration learns from `MAX_CALIBRATION_ROWS` of
    them, taken from all three days, and comes out close to one learnt on every row; the frozen
    test, counted on every row, is the same, the hour the speed held still included."""
    from water_edge.models.pump.calibration import calibrate_pump
    from water_edge.models.pump.detector import CALIBRATION_BLOCK_ROWS, MAX_CALIBRATION_ROWS

    x = duty(3 * DAY + 1, seed=0)
    seed_history(tmp_path, x)
    cal = calibrate_pump(config(), tmp_path, T0, T0 + 3 * DAY * NS)
    every_row = calibrate(stored(x), SIGNALS, model, window=32, model_version=model.version)

    assert cal.n_samples == MAX_CALIBRATION_ROWS < len(x) == every_row.n_samples
    assert (cal.from_ts, cal.to_ts) == (iso(T0), iso(T0 + 3 * DAY * NS))
    assert (cal.frozen_limit, cal.repeat_share, cal.longest_run) == (
        every_row.frozen_limit,
        every_row.repeat_share,
        every_row.longest_run,
    )
    assert cal.longest_run[3] > 3500 > CALIBRATION_BLOCK_ROWS  # the held hour, longer than any block
    assert cal.frozen_limit[3] == 2 * cal.longest_run[3]
    np.testing.assert_allclose(cal.center, every_row.center, rtol=1e-3)
    np.testing.assert_allclose(cal.scale, every_row.scale, rtol=0.05)
    np.testing.assert_allclose(cal.residual_scale, every_row.residual_scale, rtol=0.05)
    # The thresholds: quantiles of fewer rows, under a margin that widens as they get fewer.
    assert cal.level_threshold == pytest.approx(every_row.level_threshold, rel=0.1)
    assert cal.scorer_threshold == pytest.approx(every_row.scorer_threshold, rel=0.1)


async def test_the_command_without_a_range_calibrates_on_the_last_auto_hours(
    tmp_path: Path, model: Model
) -> None:
    from water_edge.core.processor import ProcessorContext
    from water_edge.models.pump.factory import PumpFactory

    seed_history(tmp_path, duty(3 * 3600 + 1, seed=2))
    factory = PumpFactory([config(auto_hours=1.0)], ProcessorContext(tmp_path))
    hour = 3600 * NS

    done = await factory.calibrate("P1", {})
    assert done["rows"] == 3601  # the last hour, not the three the history holds
    assert (done["from"], done["to"]) == (iso(T0 + 2 * hour), iso(T0 + 3 * hour))
    done = await factory.calibrate("P1", {"to": str((T0 + 2 * hour) / NS)})  # the hour before `to`
    assert (done["rows"], done["from"], done["to"]) == (3601, iso(T0 + hour), iso(T0 + 2 * hour))
    done = await factory.calibrate("P1", {"from": str((T0 + hour // 2) / NS)})  # from there on, as before
    assert (done["rows"], done["from"], done["to"]) == (9001, iso(T0 + hour // 2), iso(T0 + 3 * hour))
    assert done["version"] == 3


def test_a_calibration_gives_its_memory_back(
    tmp_path: Path, model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    from water_edge.core import memory
    from water_edge.models.pump import processor
    from water_edge.models.pump.calibration import calibrate_pump
    from water_edge.models.pump.detector import CalibrationError

    released: list[bool] = []

    def release_memory() -> bool:
        released.append(True)
        return True

    monkeypatch.setattr(processor, "release_memory", release_memory)
    seed_history(tmp_path, duty(1800, seed=3))
    calibrate_pump(config(), tmp_path, None, None)
    assert released == [True]
    with pytest.raises(CalibrationError, match="need at least 600"):  # a failed one too
        processor.recalibrate(
            config(),
            FeatureHistory.existing(tmp_path, "P1", SIGNALS, 14.0),
            CalibrationStore(tmp_path, "P1"),
            model,
            window=32,
            model_version=model.version,
            from_ns=T0,
            to_ns=T0 + 100 * NS,
        )
    assert released == [True, True]

    assert isinstance(memory.release_memory(), bool)  # glibc here or not: an answer, no error

    class NoTrim:  # musl's libc: no malloc_trim
        def __init__(self, name: object) -> None:
            pass

    memory._find_trim.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", NoTrim)
    assert memory.release_memory() is False
    memory._find_trim.cache_clear()

    def no_library(name: object) -> None:
        raise OSError("no C library")

    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert memory.release_memory() is False
    memory._find_trim.cache_clear()
