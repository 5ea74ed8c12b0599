"""The frozen test: a register that holds its last value is flagged within a minute or two and named
as frozen; a channel read in coarse steps, which repeats in normal operation, is not judged by it;
a calibration file written before the test existed loads and scores as before.

The data are firmware-sim's pump station (daily demand, pump 1) read through its Modbus register map:
float32 registers for most signals, the winding temperature in int16 tenths and the speed in whole
rpm (coarse steps), and a frozen register is the station's own `sensor_stuck` fault (the PLC repeats
the value it had at the onset). No noise is laid on after the PLC: what the gateway reads is the
register.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.cli import edge_agent
from water_edge.core.reading import Event, Reading
from water_edge.models.manifest import ModelError
from water_edge.models.pump import explain
from water_edge.models.pump.config import PumpModelConfig
from water_edge.models.pump.detector import (
    FROZEN_FLOOR,
    FROZEN_MAX_REPEAT,
    Calibration,
    alarm_series,
    calibrate,
    contributors,
    score,
)
from water_edge.models.pump.offline import gateway_texts
from water_edge.models.pump.processor import PumpProcessor
from water_edge.models.pump.store import NS, CalibrationStore
from water_edge.models.runtime import Model, load_model
from water_edge.models.train.pump_sim import SteadyStation
from water_edge.sim.pumpstation import PumpStation
from water_edge.sim.registers import POINTS, Point, encode

pytestmark = pytest.mark.slow

MANIFEST = Path(__file__).resolve().parents[1] / "models" / "pump" / "pump_scorer.json"
DAY = 24 * 3600
# role -> register-map point of pump 1
TAGS = {
    "motor_current": "pump1.motor_current",
    "voltage": "pump1.voltage",
    "suction_pressure": "pump1.suction_pressure",
    "discharge_pressure": "pump1.discharge_pressure",
    "flow": "pump1.flow",
    "vibration_x": "pump1.vibration_x",
    "vibration_y": "pump1.vibration_y",
    "winding_temp": "pump1.winding_temp_x10",  # int16, tenths of a degree
    "bearing_temp": "pump1.bearing_temp",
    "speed": "pump1.speed_int",  # uint16, whole rpm
}
ROLES = list(TAGS)
COARSE = ("winding_temp",)  # int16 tenths: repeats 98 % of the time (the whole-rpm speed 6 %: left out too)
_BY_NAME = {p.name: p for p in POINTS}
_CODE = {"float32": ">f", "int16": ">h", "uint16": ">H"}


def register(point: Point, value: float) -> float:
    """What a Modbus client reads of the value the PLC reports for `point`: encoded into its
    registers and decoded as its encoding says."""
    words = encode(point, value)
    (raw,) = struct.unpack(_CODE[point.encoding], struct.pack(f">{len(words)}H", *words))
    return float(raw) * point.scale


def registers(point: Point, values: np.ndarray) -> np.ndarray:
    """`register` of a column of values at once: what `encode` does to a float32 register (round to
    float32) or to a 16-bit integer one (value / scale, rounded half to even, clamped to the type's
    range; a lost value, NaN, reads as the type's largest). `station_rows` checks it against
    `register` row by row."""
    assert (point.byte_order, point.word_order) == ("big", "big"), point.name
    number = values / point.scale if point.scale != 1.0 else values.copy()
    if point.encoding == "float32":
        return number.astype(np.float32).astype(np.float64) * point.scale
    info = np.iinfo({"int16": np.int16, "uint16": np.uint16}[point.encoding])
    raw = np.where(np.isfinite(number), np.clip(np.rint(number), info.min, info.max), info.max)
    return raw * point.scale


CHECK_EVERY = 50  # rows of `station_rows` also read one register at a time (`register`)


def station_rows(station: PumpStation, seconds: int) -> np.ndarray:
    """`seconds` ticks of `station`, each row what a Modbus client reads of pump 1's registers.

    The PLC's values (through the station's sensor faults) are taken at every tick and encoded a
    column at a time (`registers`): encoded a register at a time, they cost nearly as much as the
    station's physics over the two days this module simulates. Every `CHECK_EVERY`-th row, every
    row with a value that is not finite and the last row are read through `encode` one register at
    a time as well, and must be the same."""
    points = [_BY_NAME[TAGS[r]] for r in ROLES]
    reported: list[list[float | int | bool | str]] = []
    for _ in range(seconds):
        state = station.step()
        reported.append([p.value(state) for p in points])
    values = np.array(reported, dtype=np.float64).reshape(seconds, len(ROLES))
    out = np.column_stack([registers(p, values[:, j]) for j, p in enumerate(points)])
    check = np.zeros(seconds, dtype=bool)
    check[::CHECK_EVERY] = True
    check[-1:] = True
    check |= ~np.isfinite(values).all(axis=1)
    for i in np.flatnonzero(check):
        one_at_a_time = [register(p, float(v)) for p, v in zip(points, values[i], strict=True)]
        np.testing.assert_array_equal(out[i], one_at_a_time, err_msg=f"row {i}")
    return out


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model(MANIFEST)


FREEZE = 2 * DAY + 600  # the flow register freezes 10 min into the third day


@pytest.fixture(scope="module")
def two_days() -> np.ndarray:
    """Two days of normal duty, then 30 min with the flow register frozen from `FREEZE`."""
    station = PumpStation(seed=5, tick_s=1.0, start_time_of_day_s=4 * 3600.0)
    station.inject("sensor_stuck", tag="pump1.flow", at_s=FREEZE)
    return station_rows(station, 2 * DAY + 1800)


@pytest.fixture(scope="module")
def day_calibration(two_days: np.ndarray, model: Model) -> Calibration:
    return calibrate(two_days[:DAY], ROLES, model, window=32, model_version=model.version)


def test_a_frozen_flow_register_is_flagged_within_a_minute_and_named_frozen(
    two_days: np.ndarray, day_calibration: Calibration, model: Model
) -> None:
    cal = day_calibration
    flow = cal.channels.index("flow")
    assert cal.repeat_share[flow] < FROZEN_MAX_REPEAT  # the flow's noise is above its resolution
    assert cal.frozen_limit[flow] >= FROZEN_FLOOR
    rows = two_days[2 * DAY :]
    scored = score(rows, cal, model)
    alarm = alarm_series(scored.score, cal.threshold, 5, 30, 0.8)
    onset = FREEZE - 2 * DAY
    assert not alarm[:onset].any()
    first = int(np.flatnonzero(alarm)[0])
    # the limit, then the alarm's persistence of 5 samples
    assert onset <= first <= onset + cal.frozen_limit[flow] + 10, f"alarm {first - onset} s after the freeze"
    assert alarm[first:].all(), "the alarm held while the register stayed frozen"
    signals, sentence = contributors(
        cal,
        scored.channel[first],
        scored.residual[first - 7 : first + 1],
        words={"flow": "flow"},
        run=scored.run[first],
    )
    assert signals[0]["signal"] == "flow"
    assert signals[0]["direction"] == "frozen"
    assert signals[0]["same_value_samples"] == scored.run[first, flow] > cal.frozen_limit[flow]
    assert f"flow frozen: the same value for {signals[0]['same_value_samples']} samples" in sentence


def test_the_offline_explanation_says_frozen_and_counts_the_signal_by_name(
    two_days: np.ndarray, day_calibration: Calibration, model: Model
) -> None:
    cal = day_calibration
    rows = two_days[2 * DAY :]
    scored = score(rows, cal, model)
    alarm = alarm_series(scored.score, cal.threshold, 5, 30, 0.8)
    held = np.zeros(scored.run.shape, dtype=bool)  # one register frozen: not held upstream
    texts = gateway_texts(cal, model, rows, scored.run, held=held, marked=np.flatnonzero(alarm))
    first = int(np.flatnonzero(alarm)[0])
    assert texts[first].startswith(
        f"flow frozen: the same value for {int(scored.run[first, cal.channels.index('flow')])} samples"
    )
    assert explain.summary(texts).startswith(f"flow {int(alarm.sum()):,}")


def test_coarse_channels_that_repeat_in_normal_duty_are_left_out_and_a_normal_day_raises_nothing(
    two_days: np.ndarray, day_calibration: Calibration, model: Model
) -> None:
    cal = day_calibration
    for role in COARSE:
        c = cal.channels.index(role)
        assert cal.repeat_share[c] > FROZEN_MAX_REPEAT, role
        assert cal.frozen_limit[c] == 0, role
    day2 = two_days[DAY : 2 * DAY]
    scored = score(day2, cal, model)
    # The coarse channels hold one reading far longer than the floor in normal duty: judged by the
    # frozen test they would have alarmed.
    assert max(scored.run[:, cal.channels.index(r)].max() for r in COARSE) > 4 * FROZEN_FLOOR
    assert not alarm_series(scored.score, cal.threshold, 5, 30, 0.8).any()


def test_a_calibration_written_before_the_frozen_test_loads_and_scores_as_before(
    tmp_path: Path, two_days: np.ndarray, day_calibration: Calibration, model: Model
) -> None:
    new = day_calibration.to_dict()
    old = {k: v for k, v in new.items() if k not in {"frozen_limit", "repeat_share", "longest_run"}}
    store = CalibrationStore(tmp_path, "P1")
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_text(json.dumps(old))
    loaded = store.load()
    assert loaded is not None
    assert loaded.frozen_limit == []
    rows = two_days[2 * DAY :]
    before = score(rows, loaded, model)
    off = score(rows, dataclasses.replace(day_calibration, frozen_limit=[0.0] * len(ROLES)), model)
    np.testing.assert_array_equal(before.score, off.score)  # relation and scorer arms only
    np.testing.assert_array_equal(before.channel, off.channel)
    with pytest.raises(ModelError, match="frozen limits"):
        Calibration.from_dict({**new, "frozen_limit": [30.0]})


# -- on the gateway ---------------------------------------------------------------------------------

CALIB_S = 1800
T0 = 1_700_000_000 * NS


@pytest.fixture(scope="module")
def steady_rows() -> np.ndarray:
    """5000 s of one duty point (the station's clock stopped), no fault: the two tests of readings
    held upstream each take the rows they need and hold them from a sample of their own (on a copy:
    these are read-only)."""
    x = station_rows(SteadyStation(seed=9, tick_s=1.0, start_time_of_day_s=11 * 3600.0), 5000)
    x.flags.writeable = False
    return x


def _feed(x: np.ndarray, first: int) -> list[tuple[str, list[Reading]]]:
    tags = [f"p1_{role}" for role in ROLES]
    return [
        ("plc1", [Reading("plc1", tag, T0 + (first + i) * NS, v) for tag, v in zip(tags, row, strict=True)])
        for i, row in enumerate(x.tolist())  # the rows' values as Python floats
    ]


def _run(proc: PumpProcessor, x: np.ndarray, first: int) -> list[Event]:
    events: list[Event] = []

    async def emit(e: Event) -> None:
        events.append(e)

    async def source() -> AsyncIterator[tuple[str, list[Reading]]]:
        for item in _feed(x, first):
            yield item

    asyncio.run(proc.run(source(), emit))
    return events


def test_the_gateway_flags_a_frozen_vibration_register_and_counts_its_run_across_a_restart(
    tmp_path: Path, model: Model
) -> None:
    """One duty point (the station's clock stopped), calibrated after half an hour as configured;
    the vibration register freezes 10 min later and the agent restarts 20 s into the freeze. After
    the restart the pump is scored once its 32-sample window is full again; the run is taken up
    from the kept samples, so the event counts the samples since the freeze, not since the
    restart."""
    freeze, restart = CALIB_S + 600, CALIB_S + 620
    station = SteadyStation(seed=9, tick_s=1.0, start_time_of_day_s=11 * 3600.0)
    station.inject("sensor_stuck", tag="pump1.vibration_x", at_s=freeze + 1)  # row `freeze` on
    x = station_rows(station, CALIB_S + 1200)
    cfg = PumpModelConfig.model_validate(
        {
            "name": "P1",
            "signals": {role: f"plc1/p1_{role}" for role in ROLES},
            "calibration": {"auto_hours": CALIB_S / 3600},
        }
    )
    first = PumpProcessor([cfg], tmp_path, model=model, model_version=model.version)
    assert _run(first, x[:restart], 0) == []
    cal = first.pumps["P1"].cal
    assert cal is not None
    limit = cal.frozen_limit[cal.channels.index("vibration_x")]
    assert limit >= FROZEN_FLOOR
    assert restart - freeze < limit  # the restart comes before the alarm

    second = PumpProcessor([cfg], tmp_path, model=model, model_version=model.version)
    events = _run(second, x[restart:], restart)
    rises = [e for e in events if e.kind == "pump_anomaly"]
    assert len(rises) == 1
    assert not [e for e in events if e.kind == "pump_anomaly_cleared"]
    after = (rises[0].ts_ns - T0) / NS - freeze
    assert limit < after <= max(limit, restart - freeze + 32) + 10, f"alarm {after} s after the freeze"
    top = rises[0].detail["signals"][0]
    assert top["signal"] == "vibration_x"
    assert top["direction"] == "frozen"
    assert top["same_value_samples"] >= after - 3  # counted from the freeze, through the restart
    assert "vibration axis 1 frozen: the same value for" in rises[0].detail["explanation"]
    assert "cause" not in rises[0].detail  # one transmitter: its own fault
    assert second.health().pumps["P1"].state == "alarm"


def test_every_signal_held_at_once_is_told_as_readings_held_upstream_not_the_pump(
    tmp_path: Path, model: Model, steady_rows: np.ndarray
) -> None:
    """A protocol gateway that lost its serial side and answers from its cache, or a PLC whose
    input scan stopped: every register holds the value it had, from one poll on. Before, the event
    named the first signal past its limit as a frozen sensor (an alarm: a technician sent to the
    pump); it is the data path, and the pump is not being watched."""
    held = CALIB_S + 600
    x = steady_rows[: CALIB_S + 900].copy()
    x[held:] = x[held]
    cfg = PumpModelConfig.model_validate(
        {
            "name": "P1",
            "signals": {role: f"plc1/p1_{role}" for role in ROLES},
            "calibration": {"auto_hours": CALIB_S / 3600},
        }
    )
    proc = PumpProcessor([cfg], tmp_path, model=model, model_version=model.version)
    rises = [e for e in _run(proc, x, 0) if e.kind == "pump_anomaly"]
    assert len(rises) == 1
    cal = proc.pumps["P1"].cal
    assert cal is not None
    judged = {c for c, limit in zip(cal.channels, cal.frozen_limit, strict=True) if limit > 0}
    assert len(judged) >= 2
    detail = rises[0].detail
    assert detail["cause"] == "readings_held_upstream"
    assert rises[0].severity == "warning"
    assert {s["signal"] for s in detail["signals"]} == judged  # every judged signal, not the first
    assert {s["direction"] for s in detail["signals"]} == {"frozen"}
    assert "stopped changing at the same sample" in detail["explanation"]
    assert "not 2 sensors" not in detail["explanation"]
    assert f"not {len(judged)} sensors failing at once" in detail["explanation"]


def test_the_offline_command_tells_signals_held_together_as_held_upstream(
    tmp_path: Path, steady_rows: np.ndarray
) -> None:
    """The same stop of the data path in an engineer's history file (`models score pump` with the
    gateway detector's calibration, over 3600 rows): a note on stderr says where the values stopped,
    and `--explain` says of each frozen signal how many others froze with it."""
    calib, held = 4000, 4600
    x = steady_rows[: held + 400].copy()
    x[held:] = x[held]
    start = np.datetime64("2024-03-01T06:00:00")
    stamps = [str(start + np.timedelta64(i, "s")).replace("T", " ") for i in range(len(x))]
    csv = tmp_path / "station.csv"
    lines = ["time," + ",".join(ROLES)]
    lines += [stamps[i] + "," + ",".join(f"{v:.6g}" for v in row) for i, row in enumerate(x)]
    csv.write_text("\n".join(lines) + "\n")
    run = edge_agent(
        "models", "score", "pump", "--csv", str(csv), "--calibrate-rows", str(calib), "--explain"
    )
    assert run.returncode == 0, run.stderr
    assert "stand on signals that stopped changing at the same sample" in run.stderr
    assert f"from data row {held + 1}, '{stamps[held]}'): readings held upstream" in run.stderr
    out = [line.split(",", 3) for line in run.stdout.splitlines()[1:]]
    marked = [row[3] for row in out if row[2] == "1"]
    assert marked
    assert all(i >= held for i, row in enumerate(out) if row[2] == "1")
    late = marked[-1]
    assert "frozen: the same value for" in late
    together = int(re.search(r"\(first: (\d+) signals from", run.stderr).group(1))  # type: ignore[union-attr]
    assert together >= 2
    assert f"samples, with {together - 1} others (held upstream?)" in late


def test_one_frozen_register_offline_is_not_told_as_held_upstream(
    tmp_path: Path, two_days: np.ndarray
) -> None:
    # calibration: the first 4000 s of the first day; then the third day's 04:05-04:25, the flow
    # register frozen from 04:10 (the same hour of the day: the same duty)
    rows = np.concatenate([two_days[:4000], two_days[FREEZE - 300 : FREEZE + 900]])
    start = np.datetime64("2024-03-01T04:00:00")
    csv = tmp_path / "one.csv"
    lines = ["time," + ",".join(ROLES)]
    lines += [str(start + np.timedelta64(i, "s")).replace("T", " ") + "," + ",".join(f"{v:.6g}" for v in row)
              for i, row in enumerate(rows)]  # fmt: skip
    csv.write_text("\n".join(lines) + "\n")
    run = edge_agent("models", "score", "pump", "--csv", str(csv), "--calibrate-rows", "4000", "--explain")
    assert run.returncode == 0, run.stderr
    marked = [line.split(",", 3)[3] for line in run.stdout.splitlines()[1:] if line.split(",", 3)[2] == "1"]
    assert any("flow frozen: the same value for" in m for m in marked)
    assert "held upstream" not in run.stderr + run.stdout
