"""EN 13757-3 value information: the primary VIF table, the 0xFB and 0xFD extension tables and the
combinable VIFE codes, mapped to a quantity name, a normalised unit and a decimal scale.

Units are normalised: volume in m3, volume flow in m3/h (per-minute and per-second codes are
rescaled), energy in Wh or J (reactive energy in varh), power in W or J/h, mass in kg, temperatures
in degC, differences in K, pressure in bar, relative humidity in %. `kind` says how the data field is
read beyond a plain number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

# "bits": a bit field (data type D: error flags, digital inputs and outputs), read unsigned.
Kind = Literal["number", "bits", "date", "datetime", "text", "raw"]

DURATION_UNITS: Final = ("s", "min", "h", "d")
_YMD: Final = ("h", "d", "month", "year")


@dataclass(frozen=True, slots=True)
class VifInfo:
    quantity: str
    unit: str = ""
    scale: float = 1.0
    kind: Kind = "number"


UNKNOWN: Final = VifInfo("unknown", kind="raw")


def _p10(n: int) -> float:
    # Exact decimal powers: 10.0 ** -3 is 0.001 exactly as a literal would be.
    return 10.0**n


def primary(code: int) -> VifInfo:  # noqa: PLR0911, PLR0912 - one return per table row group
    """The primary VIF table (extension bit stripped), codes 0x00..0x7A."""
    n3, n2 = code & 0x07, code & 0x03
    group = code & 0x78
    if group == 0x00:
        return VifInfo("energy", "Wh", _p10(n3 - 3))
    if group == 0x08:
        return VifInfo("energy", "J", _p10(n3))
    if group == 0x10:
        return VifInfo("volume", "m3", _p10(n3 - 6))
    if group == 0x18:
        return VifInfo("mass", "kg", _p10(n3 - 3))
    if code & 0x7C == 0x20:
        return VifInfo("on_time", DURATION_UNITS[n2])
    if code & 0x7C == 0x24:
        return VifInfo("operating_time", DURATION_UNITS[n2])
    if group == 0x28:
        return VifInfo("power", "W", _p10(n3 - 3))
    if group == 0x30:
        return VifInfo("power", "J/h", _p10(n3))
    if group == 0x38:
        return VifInfo("volume_flow", "m3/h", _p10(n3 - 6))
    if group == 0x40:
        return VifInfo("volume_flow", "m3/h", _p10(n3 - 7) * 60.0)
    if group == 0x48:
        return VifInfo("volume_flow", "m3/h", _p10(n3 - 9) * 3600.0)
    if group == 0x50:
        return VifInfo("mass_flow", "kg/h", _p10(n3 - 3))
    quad = {
        0x58: ("flow_temperature", "degC"),
        0x5C: ("return_temperature", "degC"),
        0x60: ("temperature_difference", "K"),
        0x64: ("external_temperature", "degC"),
        0x68: ("pressure", "bar"),
    }.get(code & 0x7C)
    if quad is not None:
        return VifInfo(quad[0], quad[1], _p10(n2 - 3))
    if code == 0x6C:
        return VifInfo("date", kind="date")
    if code == 0x6D:
        return VifInfo("date_time", kind="datetime")
    if code == 0x6E:
        return VifInfo("hca_units")
    if code & 0x7C == 0x70:
        return VifInfo("averaging_duration", DURATION_UNITS[n2])
    if code & 0x7C == 0x74:
        return VifInfo("actuality_duration", DURATION_UNITS[n2])
    fixed = {0x78: "fabrication_no", 0x79: "enhanced_identification", 0x7A: "bus_address"}
    if code in fixed:
        return VifInfo(fixed[code])
    return UNKNOWN


def extension_fb(code: int) -> VifInfo:  # noqa: PLR0911 - one return per table row group
    """The first extension table (VIF 0xFB): large units and imperial units."""
    n1, n2 = code & 0x01, code & 0x03
    if code & 0x7E == 0x00:
        return VifInfo("energy", "Wh", _p10(n1 - 1 + 6))
    if code & 0x7E == 0x02:  # EN 13757-3:2013 table 14: 10^n kvarh
        return VifInfo("reactive_energy", "varh", _p10(n1 + 3))
    if code & 0x7E == 0x08:
        return VifInfo("energy", "J", _p10(n1 - 1 + 9))
    if code & 0x7E == 0x10:
        return VifInfo("volume", "m3", _p10(n1 + 2))
    if code & 0x7E == 0x18:
        return VifInfo("mass", "kg", _p10(n1 + 2 + 3))
    if code & 0x7E == 0x1A:  # EN 13757-3:2013 table 14: 10^(n-1) %
        return VifInfo("relative_humidity", "%", _p10(n1 - 1))
    if code & 0x7E == 0x28:
        return VifInfo("power", "W", _p10(n1 - 1 + 6))
    if code & 0x7E == 0x30:
        return VifInfo("power", "J/h", _p10(n1 - 1 + 9))
    imperial = {
        0x21: VifInfo("volume", "ft3", 0.1),
        0x22: VifInfo("volume", "gal_us", 0.1),
        0x23: VifInfo("volume", "gal_us"),
        0x24: VifInfo("volume_flow", "gal_us/min", 0.001),
        0x25: VifInfo("volume_flow", "gal_us/min"),
        0x26: VifInfo("volume_flow", "gal_us/h"),
    }
    if code in imperial:
        return imperial[code]
    quad = {
        0x58: ("flow_temperature", "degF"),
        0x5C: ("return_temperature", "degF"),
        0x60: ("temperature_difference", "degF"),
        0x64: ("external_temperature", "degF"),
        0x70: ("temperature_limit", "degF"),
        0x74: ("temperature_limit", "degC"),
    }.get(code & 0x7C)
    if quad is not None:
        return VifInfo(quad[0], quad[1], _p10(n2 - 3))
    if code & 0x78 == 0x78:
        return VifInfo("cumulative_max_power", "W", _p10((code & 0x07) - 3))
    return UNKNOWN


_FD_FIXED: Final[dict[int, VifInfo]] = {
    0x08: VifInfo("access_number"),
    0x09: VifInfo("medium"),
    0x0A: VifInfo("manufacturer"),
    0x0B: VifInfo("parameter_set_id"),
    0x0C: VifInfo("model_version"),
    0x0D: VifInfo("hardware_version"),
    0x0E: VifInfo("firmware_version"),
    0x0F: VifInfo("software_version"),
    0x10: VifInfo("customer_location"),
    0x11: VifInfo("customer"),
    0x12: VifInfo("access_code_user"),
    0x13: VifInfo("access_code_operator"),
    0x14: VifInfo("access_code_system_operator"),
    0x15: VifInfo("access_code_developer"),
    0x16: VifInfo("password"),
    0x17: VifInfo("error_flags", kind="bits"),
    0x18: VifInfo("error_mask", kind="bits"),
    0x1A: VifInfo("digital_output", kind="bits"),
    0x1B: VifInfo("digital_input", kind="bits"),
    0x1C: VifInfo("baud_rate", "Bd"),
    0x1D: VifInfo("response_delay", "bit_times"),
    0x1E: VifInfo("retry"),
    0x1F: VifInfo("remote_control"),
    0x20: VifInfo("first_storage_number"),
    0x21: VifInfo("last_storage_number"),
    0x22: VifInfo("storage_block_size"),
    0x28: VifInfo("storage_interval", "month"),
    0x29: VifInfo("storage_interval", "year"),
    0x30: VifInfo("tariff_start", kind="datetime"),
    0x38: VifInfo("tariff_period", "month"),
    0x39: VifInfo("tariff_period", "year"),
    0x3A: VifInfo("dimensionless"),
    0x60: VifInfo("reset_counter"),
    0x61: VifInfo("cumulation_counter"),
    0x62: VifInfo("control_signal"),
    0x63: VifInfo("day_of_week"),
    0x64: VifInfo("week_number"),
    0x65: VifInfo("day_change_time_point"),
    0x66: VifInfo("parameter_activation_state"),
    0x67: VifInfo("special_supplier_information"),
    0x70: VifInfo("battery_change_date_time", kind="datetime"),
    0x71: VifInfo("rf_level", "dBm"),
    0x72: VifInfo("daylight_saving"),
    0x73: VifInfo("listening_window"),
    0x74: VifInfo("remaining_battery_life", "d"),
    0x75: VifInfo("meter_stopped_count"),
}


def extension_fd(code: int) -> VifInfo:  # noqa: PLR0911 - one return per table row group
    """The second extension table (VIF 0xFD): identification, bus settings, electrical units."""
    n2 = code & 0x03
    if code in _FD_FIXED:
        return _FD_FIXED[code]
    if code & 0x7C == 0x00:
        return VifInfo("credit", "currency", _p10(n2 - 3))
    if code & 0x7C == 0x04:
        return VifInfo("debit", "currency", _p10(n2 - 3))
    if code & 0x7C == 0x24:
        return VifInfo("storage_interval", DURATION_UNITS[n2])
    if code & 0x7C == 0x2C:
        return VifInfo("duration_since_readout", DURATION_UNITS[n2])
    if 0x31 <= code <= 0x33:
        return VifInfo("tariff_duration", DURATION_UNITS[n2])
    if code & 0x7C == 0x34:
        return VifInfo("tariff_period", DURATION_UNITS[n2])
    if code & 0x70 == 0x40:
        return VifInfo("voltage", "V", _p10((code & 0x0F) - 9))
    if code & 0x70 == 0x50:
        return VifInfo("current", "A", _p10((code & 0x0F) - 12))
    if code & 0x7C == 0x68:
        return VifInfo("duration_since_cumulation", _YMD[n2])
    if code & 0x7C == 0x6C:
        return VifInfo("battery_operating_time", _YMD[n2])
    return UNKNOWN


ERROR_VIFE: Final[dict[int, str]] = {
    0x00: "no error",
    0x01: "too many DIFEs",
    0x02: "storage number not implemented",
    0x03: "unit number not implemented",
    0x04: "tariff number not implemented",
    0x05: "function not implemented",
    0x06: "data class not implemented",
    0x07: "data size not implemented",
    0x0B: "too many VIFEs",
    0x0C: "illegal VIF-group",
    0x0D: "illegal VIF-exponent",
    0x0E: "VIF/DIF mismatch",
    0x0F: "unimplemented action",
    0x15: "no data available",
    0x16: "data overflow",
    0x17: "data underflow",
    0x18: "data error",
    0x1C: "premature end of record",
}

_PER: Final[dict[int, str]] = {
    0x20: "per second",
    0x21: "per minute",
    0x22: "per hour",
    0x23: "per day",
    0x24: "per week",
    0x25: "per month",
    0x26: "per year",
    0x27: "per revolution/measurement",
    0x28: "increment per input pulse on channel 0",
    0x29: "increment per input pulse on channel 1",
    0x2A: "increment per output pulse on channel 0",
    0x2B: "increment per output pulse on channel 1",
    0x2C: "per litre",
    0x2D: "per m3",
    0x2E: "per kg",
    0x2F: "per K",
    0x30: "per kWh",
    0x31: "per GJ",
    0x32: "per kW",
    0x33: "per K*l",
    0x34: "per V",
    0x35: "per A",
    0x36: "multiplied by s",
    0x37: "multiplied by s/V",
    0x38: "multiplied by s/A",
    0x39: "start date(/time) of",
    0x3A: "uncorrected unit",
    0x3B: "accumulation only if positive contributions",
    0x3C: "accumulation of abs value only if negative contributions",
    0x3E: "value at base conditions",  # e.g. a gas volume converted to base conditions
}
_PER_UNIT: Final[dict[int, str]] = {
    0x20: "/s", 0x21: "/min", 0x22: "/h", 0x23: "/d", 0x24: "/week", 0x25: "/month", 0x26: "/year",
}  # fmt: skip
_DIRECTION: Final[dict[int, str]] = {0x3B: "forward", 0x3C: "backward"}


@dataclass(frozen=True, slots=True)
class Vife:
    """One combinable VIFE: what it says, and how it changes the value (factor, offset, unit)."""

    description: str
    factor: float = 1.0
    offset: float = 0.0
    unit_suffix: str = ""
    known: bool = True
    direction: str = ""  # "forward"/"backward": accumulated from positive / negative flow only


def combinable(code: int) -> Vife:  # noqa: PLR0911, PLR0912 - one return per table row group
    """A VIFE from the orthogonal (combinable) table, extension bit stripped."""
    if code in ERROR_VIFE:
        return Vife(f"record error: {ERROR_VIFE[code]}")
    if code == 0x1D:  # EN 13757-3:2018 table 15: coded as the standard, not the maker, defines it
        return Vife("standard conformant data content")
    if code in _DIRECTION:
        return Vife(_PER[code], direction=_DIRECTION[code])
    if code in _PER:
        return Vife(_PER[code], unit_suffix=_PER_UNIT.get(code, ""))
    if code & 0x77 == 0x40:
        return Vife(f"{'upper' if code & 0x08 else 'lower'} limit value")
    if code & 0x77 == 0x41:
        return Vife(f"number of exceeds of {'upper' if code & 0x08 else 'lower'} limit")
    if code & 0x72 == 0x42:
        which = "last" if code & 0x04 else "first"
        edge = "end" if code & 0x01 else "begin"
        limit = "upper" if code & 0x08 else "lower"
        return Vife(f"date(/time) of {edge} of {which} {limit} limit exceed")
    if code & 0x70 == 0x50:
        which = "last" if code & 0x04 else "first"
        limit = "upper" if code & 0x08 else "lower"
        return Vife(f"duration of {which} {limit} limit exceed", unit_suffix="")
    if code & 0x78 == 0x60:
        which = "last" if code & 0x04 else "first"
        return Vife(f"duration of {which}")
    if code & 0x7A == 0x6A:
        which = "last" if code & 0x04 else "first"
        edge = "end" if code & 0x01 else "begin"
        return Vife(f"date(/time) of {edge} of {which}")
    if code & 0x78 == 0x70:
        exp = (code & 0x07) - 6
        return Vife(f"multiplicative correction factor 1e{exp}", factor=_p10(exp))
    if code & 0x7C == 0x78:
        exp = (code & 0x03) - 3
        return Vife(f"additive correction constant 1e{exp}", offset=_p10(exp))
    if code == 0x7D:
        return Vife("multiplicative correction factor 1e3", factor=1000.0)
    if code == 0x7E:
        return Vife("future value")
    if code == 0x7F:
        return Vife("manufacturer specific VIFEs and data follow")
    return Vife(f"unknown VIFE 0x{code:02X}", known=False)


MEDIUM: Final[dict[int, str]] = {
    0x00: "other",
    0x01: "oil",
    0x02: "electricity",
    0x03: "gas",
    0x04: "heat (outlet)",
    0x05: "steam",
    0x06: "warm water",
    0x07: "water",
    0x08: "heat cost allocator",
    0x09: "compressed air",
    0x0A: "cooling (outlet)",
    0x0B: "cooling (inlet)",
    0x0C: "heat (inlet)",
    0x0D: "heat / cooling",
    0x0E: "bus / system component",
    0x0F: "unknown",
    0x15: "hot water",
    0x16: "cold water",
    0x17: "dual water",
    0x18: "pressure",
    0x19: "A/D converter",
    0x1A: "smoke detector",
    0x1B: "room sensor",
    0x1C: "gas detector",
    0x20: "breaker (electricity)",
    0x21: "valve (gas or water)",
    0x25: "customer unit",
    0x28: "waste water",
    0x29: "garbage",
    0x37: "radio converter",
}


def medium_name(code: int) -> str:
    return MEDIUM.get(code, f"reserved (0x{code:02X})")
