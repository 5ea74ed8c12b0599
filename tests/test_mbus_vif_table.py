"""M-Bus value information (EN 13757-3 table 10, the primary VIFs, and table 14, the 0xFB extension):
every code gives its quantity, its unit and its decimal scale. A wrong row reads a meter's volume
ten times too large with nothing to show it. The rows below are the standard's, written out here
on their own, not taken from the driver's table: a test that imported the table could not find a
wrong one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from water_edge.drivers.mbus.vif import VifInfo, extension_fb, primary

DURATIONS = ("s", "min", "h", "d")
# (first code, last code, quantity, unit, scale of code) - the standard's rows, E bit clear.
Rows = list[tuple[int, int, str, str, Callable[[int], float]]]

PRIMARY: Rows = [
    (0x00, 0x07, "energy", "Wh", lambda n: 10.0 ** (n - 3)),
    (0x08, 0x0F, "energy", "J", lambda n: 10.0**n),
    (0x10, 0x17, "volume", "m3", lambda n: 10.0 ** (n - 6)),
    (0x18, 0x1F, "mass", "kg", lambda n: 10.0 ** (n - 3)),
    (0x28, 0x2F, "power", "W", lambda n: 10.0 ** (n - 3)),
    (0x30, 0x37, "power", "J/h", lambda n: 10.0**n),
    (0x38, 0x3F, "volume_flow", "m3/h", lambda n: 10.0 ** (n - 6)),
    (0x40, 0x47, "volume_flow", "m3/h", lambda n: 10.0 ** (n - 7) * 60),  # given per minute
    (0x48, 0x4F, "volume_flow", "m3/h", lambda n: 10.0 ** (n - 9) * 3600),  # given per second
    (0x50, 0x57, "mass_flow", "kg/h", lambda n: 10.0 ** (n - 3)),
    (0x58, 0x5B, "flow_temperature", "degC", lambda n: 10.0 ** (n - 3)),
    (0x5C, 0x5F, "return_temperature", "degC", lambda n: 10.0 ** (n - 3)),
    (0x60, 0x63, "temperature_difference", "K", lambda n: 10.0 ** (n - 3)),
    (0x64, 0x67, "external_temperature", "degC", lambda n: 10.0 ** (n - 3)),
    (0x68, 0x6B, "pressure", "bar", lambda n: 10.0 ** (n - 3)),
]

FB: Rows = [
    (0x00, 0x01, "energy", "Wh", lambda n: 10.0 ** (n - 1) * 1e6),  # 10^(n-1) MWh
    (0x02, 0x03, "reactive_energy", "varh", lambda n: 10.0**n * 1e3),  # 10^n kvarh
    (0x08, 0x09, "energy", "J", lambda n: 10.0 ** (n - 1) * 1e9),  # 10^(n-1) GJ
    (0x10, 0x11, "volume", "m3", lambda n: 10.0 ** (n + 2)),
    (0x18, 0x19, "mass", "kg", lambda n: 10.0 ** (n + 2) * 1e3),  # 10^(n+2) t
    (0x1A, 0x1B, "relative_humidity", "%", lambda n: 10.0 ** (n - 1)),
    (0x28, 0x29, "power", "W", lambda n: 10.0 ** (n - 1) * 1e6),  # 10^(n-1) MW
    (0x30, 0x31, "power", "J/h", lambda n: 10.0 ** (n - 1) * 1e9),  # 10^(n-1) GJ/h
    (0x58, 0x5B, "flow_temperature", "degF", lambda n: 10.0 ** (n - 3)),
    (0x5C, 0x5F, "return_temperature", "degF", lambda n: 10.0 ** (n - 3)),
    (0x60, 0x63, "temperature_difference", "degF", lambda n: 10.0 ** (n - 3)),
    (0x64, 0x67, "external_temperature", "degF", lambda n: 10.0 ** (n - 3)),
    (0x70, 0x73, "temperature_limit", "degF", lambda n: 10.0 ** (n - 3)),
    (0x74, 0x77, "temperature_limit", "degC", lambda n: 10.0 ** (n - 3)),
    (0x78, 0x7F, "cumulative_max_power", "W", lambda n: 10.0 ** (n - 3)),
]


def _rows(table: Rows) -> list[tuple[int, VifInfo]]:
    return [
        (code, VifInfo(quantity, unit, scale(code - first)))
        for first, last, quantity, unit, scale in table
        for code in range(first, last + 1)
    ]


def _hex(value: object) -> str:
    return f"{value:02X}" if isinstance(value, int) else ""


def _same(got: VifInfo, want: VifInfo) -> None:
    assert (got.quantity, got.unit, got.kind) == (want.quantity, want.unit, want.kind)
    assert got.scale == pytest.approx(want.scale, rel=1e-12)


@pytest.mark.parametrize(("code", "want"), _rows(PRIMARY), ids=_hex)
def test_each_primary_vif_gives_its_quantity_unit_and_scale(code: int, want: VifInfo) -> None:
    _same(primary(code), want)


@pytest.mark.parametrize(("code", "want"), _rows(FB), ids=_hex)
def test_each_fb_extension_vif_gives_its_quantity_unit_and_scale(code: int, want: VifInfo) -> None:
    _same(extension_fb(code), want)


@pytest.mark.parametrize(
    ("code", "quantity", "unit"),
    [
        *((0x20 + n, "on_time", DURATIONS[n]) for n in range(4)),
        *((0x24 + n, "operating_time", DURATIONS[n]) for n in range(4)),
        *((0x70 + n, "averaging_duration", DURATIONS[n]) for n in range(4)),
        *((0x74 + n, "actuality_duration", DURATIONS[n]) for n in range(4)),
    ],
)
def test_durations_give_their_unit(code: int, quantity: str, unit: str) -> None:
    _same(primary(code), VifInfo(quantity, unit))


def test_the_primary_table_s_single_codes() -> None:
    assert primary(0x6C).kind == "date"  # type G
    assert primary(0x6D).kind == "datetime"  # type F
    assert [primary(c).quantity for c in (0x6E, 0x78, 0x79, 0x7A)] == [
        "hca_units",
        "fabrication_no",
        "enhanced_identification",
        "bus_address",
    ]


@pytest.mark.parametrize(
    ("code", "quantity", "unit", "scale"),
    [
        (0x21, "volume", "ft3", 0.1),
        (0x22, "volume", "gal_us", 0.1),
        (0x23, "volume", "gal_us", 1.0),
        (0x24, "volume_flow", "gal_us/min", 0.001),
        (0x25, "volume_flow", "gal_us/min", 1.0),
        (0x26, "volume_flow", "gal_us/h", 1.0),
    ],
)
def test_the_fb_extension_s_imperial_units(code: int, quantity: str, unit: str, scale: float) -> None:
    _same(extension_fb(code), VifInfo(quantity, unit, scale))


@pytest.mark.parametrize("code", [0x04, 0x05, 0x06, 0x07])  # E000 01nn: reserved
def test_a_reserved_fb_code_is_unknown_and_read_raw(code: int) -> None:
    info = extension_fb(code)
    assert (info.quantity, info.kind) == ("unknown", "raw")
