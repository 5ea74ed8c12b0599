"""M-Bus value information (EN 13757-3 table 10, the primary VIFs; table 14, the 0xFB extension; the
0xFD extension; and the combinable VIFEs with the record error codes): every code gives its
quantity, its unit and its decimal scale. A wrong row reads a meter's volume
ten times too large with nothing to show it. The rows below are the standard's, written out here
on their own, not taken from the driver's table: a test that imported the table could not find a
wrong one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from water_edge.drivers.mbus.vif import VifInfo, combinable, extension_fb, extension_fd, primary

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


YMD = ("h", "d", "month", "year")

FD: Rows = [
    (0x00, 0x03, "credit", "currency", lambda n: 10.0 ** (n - 3)),  # of the local legal currency
    (0x04, 0x07, "debit", "currency", lambda n: 10.0 ** (n - 3)),
    (0x40, 0x4F, "voltage", "V", lambda n: 10.0 ** (n - 9)),
    (0x50, 0x5F, "current", "A", lambda n: 10.0 ** (n - 12)),
]


@pytest.mark.parametrize(("code", "want"), _rows(FD), ids=_hex)
def test_each_fd_extension_vif_with_a_scale_gives_it(code: int, want: VifInfo) -> None:
    _same(extension_fd(code), want)


@pytest.mark.parametrize(
    ("code", "quantity", "unit"),
    [
        *((0x24 + n, "storage_interval", DURATIONS[n]) for n in range(4)),
        (0x28, "storage_interval", "month"),
        (0x29, "storage_interval", "year"),
        *((0x2C + n, "duration_since_readout", DURATIONS[n]) for n in range(4)),
        *((0x30 + n, "tariff_duration", DURATIONS[n]) for n in range(1, 4)),  # 0x30 is the start
        *((0x34 + n, "tariff_period", DURATIONS[n]) for n in range(4)),
        (0x38, "tariff_period", "month"),
        (0x39, "tariff_period", "year"),
        *((0x68 + n, "duration_since_cumulation", YMD[n]) for n in range(4)),
        *((0x6C + n, "battery_operating_time", YMD[n]) for n in range(4)),
        (0x71, "rf_level", "dBm"),
        (0x74, "remaining_battery_life", "d"),
        (0x1C, "baud_rate", "Bd"),
        (0x1D, "response_delay", "bit_times"),
    ],
    ids=_hex,
)
def test_fd_extension_durations_and_units(code: int, quantity: str, unit: str) -> None:
    _same(extension_fd(code), VifInfo(quantity, unit))


@pytest.mark.parametrize(
    ("code", "quantity"),
    [
        (0x08, "access_number"),
        (0x09, "medium"),
        (0x0A, "manufacturer"),
        (0x0B, "parameter_set_id"),
        (0x0C, "model_version"),
        (0x0D, "hardware_version"),
        (0x0E, "firmware_version"),
        (0x0F, "software_version"),
        (0x10, "customer_location"),
        (0x11, "customer"),
        (0x12, "access_code_user"),
        (0x13, "access_code_operator"),
        (0x14, "access_code_system_operator"),
        (0x15, "access_code_developer"),
        (0x16, "password"),
        (0x1E, "retry"),
        (0x1F, "remote_control"),
        (0x20, "first_storage_number"),
        (0x21, "last_storage_number"),
        (0x22, "storage_block_size"),
        (0x3A, "dimensionless"),
        (0x60, "reset_counter"),
        (0x61, "cumulation_counter"),
        (0x62, "control_signal"),
        (0x63, "day_of_week"),
        (0x64, "week_number"),
        (0x65, "day_change_time_point"),
        (0x66, "parameter_activation_state"),
        (0x67, "special_supplier_information"),
        (0x72, "daylight_saving"),
        (0x73, "listening_window"),
        (0x75, "meter_stopped_count"),
    ],
    ids=_hex,
)
def test_fd_extension_identification_and_counters_are_plain_numbers(code: int, quantity: str) -> None:
    _same(extension_fd(code), VifInfo(quantity))


@pytest.mark.parametrize(
    ("code", "quantity", "kind"),
    [
        (0x17, "error_flags", "bits"),
        (0x18, "error_mask", "bits"),
        (0x1A, "digital_output", "bits"),
        (0x1B, "digital_input", "bits"),
        (0x30, "tariff_start", "datetime"),
        (0x70, "battery_change_date_time", "datetime"),
    ],
    ids=_hex,
)
def test_fd_extension_flags_and_dates_are_read_as_such(code: int, quantity: str, kind: str) -> None:
    info = extension_fd(code)
    assert (info.quantity, info.kind) == (quantity, kind)


@pytest.mark.parametrize("code", [0x7F], ids=_hex)  # E111 1111: reserved
def test_a_reserved_fd_code_is_unknown_and_read_raw(code: int) -> None:
    info = extension_fd(code)
    assert (info.quantity, info.kind) == ("unknown", "raw")


# The record errors a meter sends in a combinable VIFE (E000 xxxx from the meter): the code and
# what it says. 8-10, 16-20, 25-27 and 29-31 are reserved.
RECORD_ERRORS = {
    0: "no error",
    1: "too many DIFEs",
    2: "storage number not implemented",
    3: "unit number not implemented",
    4: "tariff number not implemented",
    5: "function not implemented",
    6: "data class not implemented",
    7: "data size not implemented",
    11: "too many VIFEs",
    12: "illegal VIF-group",
    13: "illegal VIF-exponent",
    14: "VIF/DIF mismatch",
    15: "unimplemented action",
    21: "no data available",
    22: "data overflow",
    23: "data underflow",
    24: "data error",
    28: "premature end of record",
}


@pytest.mark.parametrize(("code", "text"), RECORD_ERRORS.items(), ids=_hex)
def test_each_record_error_says_what_the_meter_reported(code: int, text: str) -> None:
    vife = combinable(code)
    assert vife.description == f"record error: {text}"
    assert (vife.factor, vife.offset) == (1.0, 0.0)


@pytest.mark.parametrize(("code", "factor"), [(0x70 + n, 10.0 ** (n - 6)) for n in range(8)], ids=_hex)
def test_a_multiplicative_correction_vife_scales_the_value(code: int, factor: float) -> None:
    vife = combinable(code)  # E111 0nnn: 10^(nnn-6)
    assert vife.factor == pytest.approx(factor, rel=1e-12)
    assert vife.offset == 0.0


@pytest.mark.parametrize(("code", "offset"), [(0x78 + n, 10.0 ** (n - 3)) for n in range(4)], ids=_hex)
def test_an_additive_correction_vife_offsets_the_value(code: int, offset: float) -> None:
    vife = combinable(code)  # E111 10nn: 10^(nn-3) of the VIF's unit
    assert vife.offset == pytest.approx(offset, rel=1e-12)
    assert vife.factor == 1.0


def test_the_single_correction_and_marker_vifes() -> None:
    assert combinable(0x7D).factor == 1000.0  # E111 1101: multiplicative correction factor 10^3
    assert combinable(0x7E).description == "future value"
    assert combinable(0x7F).description == "manufacturer specific VIFEs and data follow"


@pytest.mark.parametrize(
    ("code", "suffix"),
    list(zip(range(0x20, 0x27), ("/s", "/min", "/h", "/d", "/week", "/month", "/year"), strict=True)),
    ids=_hex,
)
def test_a_per_time_vife_makes_the_unit_a_rate(code: int, suffix: str) -> None:
    assert combinable(code).unit_suffix == suffix  # E010 0000-0110: per second ... per year


def test_accumulation_vifes_say_which_flow_direction_was_counted() -> None:
    assert combinable(0x3B).direction == "forward"  # only positive contributions
    assert combinable(0x3C).direction == "backward"  # abs value of negative contributions only


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0x40, "lower limit value"),
        (0x48, "upper limit value"),
        (0x41, "number of exceeds of lower limit"),
        (0x49, "number of exceeds of upper limit"),
        (0x42, "date(/time) of begin of first lower limit exceed"),
        (0x43, "date(/time) of end of first lower limit exceed"),
        (0x46, "date(/time) of begin of last lower limit exceed"),
        (0x4F, "date(/time) of end of last upper limit exceed"),
        (0x50, "duration of first lower limit exceed"),
        (0x5C, "duration of last upper limit exceed"),
        (0x60, "duration of first"),
        (0x64, "duration of last"),
        (0x6A, "date(/time) of begin of first"),
        (0x6F, "date(/time) of end of last"),
    ],
    ids=_hex,
)
def test_limit_and_duration_vifes_name_which_limit_and_edge(code: int, text: str) -> None:
    assert combinable(code).description == text
