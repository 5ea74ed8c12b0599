"""The pump station's Modbus register map (the one documented in docs/firmware-sim.md) and the
register images the server answers from; pure Python, no pymodbus.

`POINTS` lists every mapped value: unit ID, table, address, encoding, unit and where its value
comes from in the model. `Plant` holds one `UnitImage` per unit ID (register arrays plus a
"mapped" mask per table) and rewrites the points from a `StationState` on every tick, through the
station's sensor faults (`Point.value`). A read touching any unmapped address is refused with
exception 2, as a PLC does. `WRITABLE` is the small operator area (set-points at holding 500..,
pump enables on coils 10..): `Plant.write` validates a write against it and hands the value on.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from water_edge.sim.pumpstation import PumpState, PumpStation, StationState

Table = Literal["holding", "input", "coil", "discrete"]
Encoding = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "bool"
]

MAP_VERSION: Final = 2  # 2: bearing temperature, voltage, efficiency, writable set-points
STATION_NAME: Final = "PS-NORTH"
METER_SERIAL: Final = "FM-00042"
STATION_UNIT: Final = 1
METER_UNIT: Final = 2
PUMP_BASE: Final = 100  # pump p (1..3) starts at holding register 100 * p
WRITABLE_BASE: Final = 500  # holding registers an operator may write (set-points)
WRITABLE_COIL_BASE: Final = 10  # coils 10.. : pump p enable
BENCH_BASE: Final = 10000  # --bench-tags block: float32 input registers on unit 1
MAX_BENCH_TAGS: Final = 25_000
ADDRESS_SPACE: Final = 65536

_STRUCT: Final[dict[str, str]] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
_WIDTH: Final[dict[str, int]] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float32": 2, "float64": 4, "bool": 1,
}  # fmt: skip

Source = Callable[[StationState], float | int | bool | str]


@dataclass(frozen=True, slots=True)
class Point:
    """One mapped value. `scale`: the register holds value / scale (e.g. 0.1 for tenths)."""

    name: str
    unit_id: int
    table: Table
    address: int
    encoding: Encoding
    unit: str
    description: str
    source: Source
    scale: float = 1.0
    length: int = 0  # registers, strings only
    byte_order: Literal["big", "little"] = "big"
    word_order: Literal["big", "little"] = "big"
    bit_names: tuple[str, ...] = ()  # uint16 status words: bit 0 first
    sensor: str = ""  # the measurement this point reports (sensor faults); default: its name

    @property
    def width(self) -> int:
        return self.length if self.encoding == "string" else _WIDTH[self.encoding]

    def value(self, state: StationState) -> float | int | bool | str:
        """What the PLC reports: the model's value through the station's sensor faults."""
        return state.sensors.apply(self.sensor or self.name, self.source(state))


def encode(point: Point, value: float | int | bool | str) -> list[int]:
    """The registers (or a single 0/1 for bits) that carry `value` for `point`."""
    if point.encoding == "bool":
        return [1 if value else 0]
    if point.encoding == "string":
        raw = str(value).encode("ascii", "replace")[: point.width * 2]
        raw = raw.ljust(point.width * 2, b"\x00")
        if point.byte_order == "little":
            raw = _swap_pairs(raw)
        return list(struct.unpack(f">{point.width}H", raw))
    code = _STRUCT[point.encoding]
    if isinstance(value, str):
        raise TypeError(f"{point.name}: {point.encoding} needs a number, got {value!r}")
    number: float | int = value / point.scale if point.scale != 1.0 else value
    if code not in "fd":
        lo, hi = _int_range(code)
        # A lost sensor on an integer register reads the type's largest value: the fault code PLCs
        # put there (a Siemens analog input reads 32767, "overflow", for a broken 4-20 mA loop).
        lost = isinstance(number, float) and not math.isfinite(number)
        number = hi if lost else max(lo, min(hi, round(number)))
    raw = struct.pack(">" + code, number)  # big-endian: b0 b1 b2 b3 ...
    if point.word_order == "little":
        words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
        raw = b"".join(reversed(words))
    if point.byte_order == "little":
        raw = _swap_pairs(raw)
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


def _swap_pairs(raw: bytes) -> bytes:
    swapped = bytearray(raw)
    swapped[0::2], swapped[1::2] = raw[1::2], raw[0::2]
    return bytes(swapped)


def _int_range(code: str) -> tuple[int, int]:
    bits = struct.calcsize(code) * 8
    if code.isupper():
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _pump(p: int) -> Callable[[StationState], PumpState]:
    return lambda s: s.pumps[p - 1]


def _status_word(pump: PumpState) -> int:
    return int(pump.running) | int(pump.fault) << 1 | 1 << 2  # bit 2: in automatic mode


def _pump_points(p: int) -> list[Point]:
    base = PUMP_BASE * p
    get = _pump(p)
    pre = f"pump{p}"

    def hr(  # noqa: PLR0917 - a register table row reads best positionally
        off: int,
        name: str,
        enc: Encoding,
        unit: str,
        desc: str,
        src: Source,
        scale: float = 1.0,
        bits: tuple[str, ...] = (),
        sensor: str = "",
    ) -> Point:
        return Point(
            f"{pre}.{name}",
            STATION_UNIT,
            "holding",
            base + off,
            enc,
            unit,
            f"pump {p} {desc}",
            src,
            scale,
            bit_names=bits,
            sensor=f"{pre}.{sensor}" if sensor else "",
        )

    points = [
        hr(0, "flow", "float32", "m3/h", "flow", lambda s: get(s).flow_m3h),
        hr(2, "suction_pressure", "float32", "bar", "suction pressure",
           lambda s: get(s).suction_bar),
        hr(4, "discharge_pressure", "float32", "bar", "discharge pressure",
           lambda s: get(s).discharge_bar),
        hr(6, "motor_current", "float32", "A", "motor current", lambda s: get(s).current_a),
        hr(8, "vibration_x", "float32", "mm/s", "vibration RMS, x axis",
           lambda s: get(s).vibration_x_mm_s),
        hr(10, "vibration_y", "float32", "mm/s", "vibration RMS, y axis",
           lambda s: get(s).vibration_y_mm_s),
        hr(12, "winding_temp", "float32", "degC", "winding temperature",
           lambda s: get(s).winding_temp_c),
        hr(14, "speed", "float32", "rpm", "speed", lambda s: get(s).speed_rpm),
        hr(16, "status", "uint16", "", "status word", lambda s: _status_word(get(s)),
           bits=("running", "fault", "auto")),
        hr(17, "motor_current_x10", "int16", "A", "motor current, tenths",
           lambda s: get(s).current_a, 0.1, sensor="motor_current"),
        hr(18, "winding_temp_x10", "int16", "degC", "winding temperature, tenths",
           lambda s: get(s).winding_temp_c, 0.1, sensor="winding_temp"),
        hr(19, "speed_int", "uint16", "rpm", "speed, whole rpm", lambda s: get(s).speed_rpm,
           sensor="speed"),
        hr(20, "run_seconds", "uint32", "s", "running time", lambda s: int(get(s).run_s)),
        hr(22, "starts", "uint32", "", "number of starts", lambda s: get(s).starts),
        hr(24, "bearing_temp", "float32", "degC", "drive-end bearing temperature",
           lambda s: get(s).bearing_temp_c),
        hr(26, "voltage", "float32", "V", "motor supply voltage (line to line)",
           lambda s: s.supply_v),
        hr(28, "efficiency", "float32", "%", "hydraulic efficiency (computed by the PLC)",
           lambda s: get(s).efficiency * 100.0),
        hr(30, "head", "float32", "m", "differential head (computed by the PLC)",
           lambda s: get(s).head_m),
        hr(32, "power", "float32", "kW", "electrical power", lambda s: get(s).power_kw),
    ]  # fmt: skip
    i = p - 1
    points += [
        Point(f"{pre}.run_command", STATION_UNIT, "coil", i, "bool", "",
              f"pump {p} run command (read-only)", lambda s: get(s).running),
        Point(f"{pre}.running", STATION_UNIT, "discrete", i, "bool", "",
              f"pump {p} running feedback", lambda s: get(s).running),
        Point(f"{pre}.fault", STATION_UNIT, "discrete", 3 + i, "bool", "",
              f"pump {p} fault", lambda s: get(s).fault),
        Point(f"{pre}.enable", STATION_UNIT, "coil", WRITABLE_COIL_BASE + i, "bool", "",
              f"pump {p} enabled by the operator (writable)", lambda s: get(s).enabled),
    ]  # fmt: skip
    return points


def _station_points(n_pumps: int) -> list[Point]:
    u = STATION_UNIT
    h: Table = "holding"
    return [
        Point("station.name", u, h, 0, "string", "", "station name (16 ASCII chars, NUL padded)",
              lambda s: STATION_NAME, length=8),
        Point("station.map_version", u, h, 8, "uint16", "", "register map version",
              lambda s: MAP_VERSION),
        Point("station.pump_count", u, h, 9, "uint16", "", "number of pumps",
              lambda s: n_pumps),
        Point("station.uptime", u, h, 10, "uint32", "s", "seconds since the PLC started",
              lambda s: int(s.elapsed_s)),
        Point("station.ticks", u, h, 12, "uint64", "", "model ticks (100 ms) since start",
              lambda s: s.ticks),
        Point("station.tank_level", u, h, 16, "float64", "m", "tank level",
              lambda s: s.tank_level_m),
        Point("station.demand", u, h, 20, "float32", "m3/h", "town demand",
              lambda s: s.demand_m3h),
        Point("station.outflow", u, h, 22, "float32", "m3/h", "flow pumped into the network",
              lambda s: s.outflow_m3h),
        Point("station.header_pressure", u, h, 24, "float32", "bar", "discharge header pressure",
              lambda s: s.header_bar),
        Point("station.tank_level_cm", u, h, 26, "int16", "m", "tank level, centimetres",
              lambda s: s.tank_level_m, 0.01),
        Point("station.ambient_x10", u, h, 27, "int16", "degC", "ambient temperature, tenths",
              lambda s: s.ambient_c, 0.1),
        Point("station.net_inflow", u, h, 28, "int32", "L/h",
              "tank net inflow (pumped - demand), signed", lambda s: s.outflow_m3h * 1000
              - s.demand_m3h * 1000),
        Point("station.demand_cdab", u, h, 30, "float32", "m3/h",
              "town demand, word-swapped (word_order little)", lambda s: s.demand_m3h,
              word_order="little"),
        Point("station.demand_badc", u, h, 32, "float32", "m3/h",
              "town demand, byte-swapped (byte_order little)", lambda s: s.demand_m3h,
              byte_order="little"),
        Point("station.demand_dcba", u, h, 34, "float32", "m3/h",
              "town demand, little-endian (byte and word order little)",
              lambda s: s.demand_m3h, byte_order="little", word_order="little"),
        Point("station.energy", u, h, 36, "int64", "Wh", "energy used by the pumps",
              lambda s: int(s.energy_wh)),
        Point("station.supply_voltage", u, h, 40, "float32", "V", "supply voltage (line to line)",
              lambda s: s.supply_v),
        Point("station.network_pressure", u, h, 42, "float32", "bar",
              "network pressure at the district monitoring point", lambda s: s.network_bar),
        Point("station.level_setpoint_cm", u, h, WRITABLE_BASE, "uint16", "m",
              "tank level set-point, centimetres (writable 50..550)",
              lambda s: s.setpoints.level_m, 0.01),
        Point("station.max_speed_pct", u, h, WRITABLE_BASE + 1, "uint16", "%",
              "pump speed limit, % of rated (writable 60..100)",
              lambda s: s.setpoints.max_speed_ratio * 100.0),
        Point("station.auto_mode", u, "coil", 3, "bool", "", "station in automatic (read-only)",
              lambda s: True),
        Point("station.tank_high", u, "discrete", 6, "bool", "", "tank high level (> 5.5 m)",
              lambda s: s.tank_level_m > 5.5),
        Point("station.tank_low", u, "discrete", 7, "bool", "", "tank low level (< 1.0 m)",
              lambda s: s.tank_level_m < 1.0),
    ]  # fmt: skip


def _meter_points() -> list[Point]:
    u = METER_UNIT
    i: Table = "input"
    return [
        Point("meter.flow", u, i, 0, "float32", "m3/h", "outlet flow", lambda s: s.outflow_m3h),
        Point("meter.total_litres", u, i, 2, "uint32", "L", "totaliser, litres (wraps at 2^32)",
              lambda s: int(s.totaliser_m3 * 1000) % (1 << 32)),
        Point("meter.total", u, i, 4, "float64", "m3", "totaliser", lambda s: s.totaliser_m3),
        Point("meter.status", u, i, 8, "uint16", "", "status word", lambda s: 0b001,
              bit_names=("ok", "reverse_flow", "empty_pipe")),
        Point("meter.water_temp_x100", u, i, 9, "int16", "degC", "water temperature, hundredths",
              lambda s: s.water_temp_c, 0.01),
        Point("meter.serial", u, i, 10, "string", "", "serial number (16 ASCII chars)",
              lambda s: METER_SERIAL, length=8),
    ]  # fmt: skip


def station_points(n_pumps: int = 3) -> list[Point]:
    """The full map for a station with `n_pumps` pumps."""
    points = _station_points(n_pumps)
    for p in range(1, n_pumps + 1):
        points += _pump_points(p)
    return points + _meter_points()


POINTS: Final = station_points()


class UnitImage:
    """The four tables of one unit ID: values and which addresses are mapped."""

    def __init__(self) -> None:
        self.values: dict[Table, array[int]] = {
            t: array("H", bytes(2 * ADDRESS_SPACE)) for t in ("holding", "input", "coil", "discrete")
        }
        self.mapped: dict[Table, bytearray] = {
            t: bytearray(ADDRESS_SPACE) for t in ("holding", "input", "coil", "discrete")
        }

    def map(self, table: Table, address: int, count: int) -> None:
        self.mapped[table][address : address + count] = b"\x01" * count

    def read(self, table: Table, address: int, count: int) -> list[int] | None:
        """The values at address..address+count-1, or None if any of them is unmapped."""
        end = address + count
        if count < 1 or end > ADDRESS_SPACE or 0 in self.mapped[table][address:end]:
            return None
        return self.values[table][address:end].tolist()


@dataclass(frozen=True, slots=True)
class Writable:
    """One writable register or coil: the raw values it accepts."""

    name: str
    low: int
    high: int


def _writable(n_pumps: int) -> dict[tuple[int, Table, int], Writable]:
    area: dict[tuple[int, Table, int], Writable] = {
        (STATION_UNIT, "holding", WRITABLE_BASE): Writable("station.level_setpoint_cm", 50, 550),
        (STATION_UNIT, "holding", WRITABLE_BASE + 1): Writable("station.max_speed_pct", 60, 100),
    }
    for i in range(n_pumps):
        area[(STATION_UNIT, "coil", WRITABLE_COIL_BASE + i)] = Writable(f"pump{i + 1}.enable", 0, 1)
    return area


WRITABLE: Final = _writable(3)
ILLEGAL_ADDRESS: Final = 2
ILLEGAL_VALUE: Final = 3


def apply_write(station: PumpStation, name: str, raw: int) -> None:
    """Hand a validated operator write to the model (`Plant.on_write` in the runner)."""
    if name == "station.level_setpoint_cm":
        station.state.setpoints.level_m = raw / 100.0
    elif name == "station.max_speed_pct":
        station.state.setpoints.max_speed_ratio = raw / 100.0
    elif name.endswith(".enable"):
        station.set_pump_enabled(int(name[4 : name.index(".")]), bool(raw))
    else:
        raise KeyError(name)


MAX_READ_REGISTERS: Final = 125  # Modbus's limit for function codes 3 and 4


class Plant:
    """Register images for every unit ID the simulated gateway answers on."""

    def __init__(
        self, points: Sequence[Point] = POINTS, bench_tags: int = 0, max_read_registers: int = 125
    ) -> None:
        if not 0 <= bench_tags <= MAX_BENCH_TAGS:
            raise ValueError(f"bench tags must be 0..{MAX_BENCH_TAGS}")
        if not 1 <= max_read_registers <= MAX_READ_REGISTERS:
            raise ValueError(f"max read registers must be 1..{MAX_READ_REGISTERS}")
        # A read of more registers is refused with exception 3 (illegal data value), as drives and
        # small PLCs that take 16-64 registers a request refuse it; 125 is the protocol's own limit.
        self.max_read_registers = max_read_registers
        self.on_write: Callable[[str, int], None] | None = None
        self.writes = 0
        self.points = list(points)
        self.units: dict[int, UnitImage] = {}
        for point in self.points:
            self.unit(point.unit_id).map(point.table, point.address, point.width)
        self.bench_tags = bench_tags
        self._bench_base = [i * 0.5 for i in range(bench_tags)]
        self._bench_pack = struct.Struct(f">{bench_tags}f")
        if bench_tags:
            self.unit(STATION_UNIT).map("input", BENCH_BASE, 2 * bench_tags)

    def read_limit(self, table: Table) -> int:
        """The most registers (bits: 2000, the protocol's limit) one read of `table` may ask for."""
        return 2000 if table in ("coil", "discrete") else self.max_read_registers

    def unit(self, unit_id: int) -> UnitImage:
        return self.units.setdefault(unit_id, UnitImage())

    def write(self, unit_id: int, table: Table, address: int, values: Sequence[int]) -> int | None:
        """Apply an operator write (all or nothing); the Modbus exception code if refused:
        2 when any address is not writable, 3 when a value is out of its range."""
        targets = [WRITABLE.get((unit_id, table, address + i)) for i in range(len(values))]
        if not values or any(t is None for t in targets):
            return ILLEGAL_ADDRESS
        checked = [(t, int(v)) for t, v in zip(targets, values, strict=True) if t is not None]
        if any(not t.low <= v <= t.high for t, v in checked):
            return ILLEGAL_VALUE
        image = self.units[unit_id].values[table]
        for i, (target, value) in enumerate(checked):
            image[address + i] = value
            if self.on_write is not None:
                self.on_write(target.name, value)
        self.writes += 1
        return None

    def update(self, state: StationState) -> None:
        """Rewrite every point from the model's state (called once per tick)."""
        for point in self.points:
            regs = encode(point, point.value(state))
            self.units[point.unit_id].values[point.table][point.address : point.address + len(regs)] = array(
                "H", regs
            )

    def update_bench(self, second: int) -> None:
        """Bench tag i holds i/2 + (second mod 100), as float32 big-endian at BENCH_BASE + 2i."""
        if not self.bench_tags:
            return
        k = second % 100
        regs = array("H", self._bench_pack.pack(*[b + k for b in self._bench_base]))
        if sys.byteorder == "little":
            regs.byteswap()  # the image holds register values; the packed bytes are big-endian
        self.units[STATION_UNIT].values["input"][BENCH_BASE : BENCH_BASE + len(regs)] = regs


def bench_value(index: int, second: int) -> float:
    """What bench tag `index` reads during sim second `second`."""
    return index * 0.5 + second % 100
