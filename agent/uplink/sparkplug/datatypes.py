"""Sparkplug datatypes of metrics and how a reading's value is put into a metric.

Where the datatype comes from, in order:

1. the tag's declared type in its device's config, where the driver has one (Modbus `type`:
   int16 → Int16, uint16 → UInt16, int32/uint32/int64/uint64 alike, float32 → Float,
   float64 → Double, bool and bit → Boolean, string → String; a tag with `scale`/`offset` is
   Double, because scaling makes a float);
2. otherwise the Python type of the first value seen: bool → Boolean, int → Int64 (UInt64 above
   2^63 - 1), float → Double, str → String;
3. a tag with neither (declared by its driver, never read yet) is born as Double with `is_null`,
   and born again with the datatype of its first value if that is not Double.

A later value that the birth's datatype cannot hold (a string in a Double, 2.5 in an Int64) makes
the metric take the value's datatype and the node rebirth: Sparkplug allows a datatype to change
only with a new birth.
"""

from __future__ import annotations

import math
from typing import Final

from water_edge.agent.uplink.sparkplug.proto import DataType, Payload
from water_edge.core.reading import Value
from water_edge.drivers.base import DeviceConfig

_MODBUS: Final[dict[str, int]] = {
    "int16": DataType.Int16,
    "uint16": DataType.UInt16,
    "int32": DataType.Int32,
    "uint32": DataType.UInt32,
    "int64": DataType.Int64,
    "uint64": DataType.UInt64,
    "float32": DataType.Float,
    "float64": DataType.Double,
    "bit": DataType.Boolean,
    "bool": DataType.Boolean,
    "string": DataType.String,
}
_INT_RANGE: Final[dict[int, tuple[int, int]]] = {
    DataType.Int8: (-(2**7), 2**7 - 1),
    DataType.Int16: (-(2**15), 2**15 - 1),
    DataType.Int32: (-(2**31), 2**31 - 1),
    DataType.Int64: (-(2**63), 2**63 - 1),
    DataType.UInt8: (0, 2**8 - 1),
    DataType.UInt16: (0, 2**16 - 1),
    DataType.UInt32: (0, 2**32 - 1),
    DataType.UInt64: (0, 2**64 - 1),
}
# Sparkplug puts 8..32-bit integers in `int_value` (uint32) and 64-bit ones in `long_value`
# (uint64), negative numbers as two's complement of that width.
_WIDTH: Final[dict[int, int]] = {
    DataType.Int8: 32,
    DataType.Int16: 32,
    DataType.Int32: 32,
    DataType.UInt8: 32,
    DataType.UInt16: 32,
    DataType.UInt32: 32,
    DataType.Int64: 64,
    DataType.UInt64: 64,
}
DEFAULT: Final = DataType.Double
# Plain ints: the protobuf enum wrapper resolves each `DataType.X` through __getattr__, which is
# slow enough to show in the DATA path at 10,000 values a second.
BOOLEAN: Final = int(DataType.Boolean)
STRING: Final = int(DataType.String)
FLOAT: Final = int(DataType.Float)
DOUBLE: Final = int(DataType.Double)
_INT64: Final = int(DataType.Int64)
_UINT64: Final = int(DataType.UInt64)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1
_FLOATS: Final = frozenset((FLOAT, DOUBLE))


def declared(config: DeviceConfig) -> dict[str, int]:
    """Datatypes the device's config declares, by tag name (empty for drivers without types)."""
    if not config.kind.startswith("modbus"):
        return {}
    from water_edge.drivers.modbus.config import ModbusDeviceConfig

    if not isinstance(config, ModbusDeviceConfig):
        return {}
    tags = config.model_dump().get("tags", [])
    out: dict[str, int] = {}
    for tag in tags:
        scaled = tag.get("scale", 1.0) != 1.0 or tag.get("offset", 0.0) != 0.0
        out[tag["name"]] = DataType.Double if scaled else _MODBUS[tag["type"]]
    return out


def of_value(value: Value) -> int | None:
    """The datatype a value would be born with; None for None."""
    kind = type(value)
    if kind is float:
        return DOUBLE
    if kind is bool:
        return BOOLEAN
    if kind is int:
        if value <= _INT64_MAX:  # type: ignore[operator]
            return _INT64
        # An Int64 metric cannot hold it: it would go out wrapped, and ask for a rebirth each time.
        return _UINT64 if value <= _UINT64_MAX else DOUBLE  # type: ignore[operator]
    if kind is str:
        return STRING
    return None


def fits(datatype: int, value: Value) -> bool:
    """Whether `value` can be sent as `datatype` without losing anything (None always fits)."""
    if value is None:
        return True
    kind = type(value)
    if datatype in _FLOATS:
        return kind is float or kind is int
    if datatype == BOOLEAN:
        return kind is bool
    if datatype == STRING:
        return kind is str
    bounds = _INT_RANGE.get(datatype)
    if bounds is None:
        return False
    if kind is float and math.isfinite(value) and float(value).is_integer():  # type: ignore[arg-type]
        value = int(value)
        kind = int
    return kind is int and bounds[0] <= value <= bounds[1]  # type: ignore[operator]


def put(metric: Payload.Metric, datatype: int, value: Value) -> None:
    """Set the metric's value field for `datatype` (`is_null` for None); `fits()` must hold."""
    if value is None:
        metric.is_null = True
        return
    if datatype == DOUBLE:
        metric.double_value = float(value)
    elif datatype == BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype == STRING:
        metric.string_value = str(value)
    elif datatype == FLOAT:
        metric.float_value = float(value)
    else:
        number = int(value)
        if _WIDTH[datatype] == 32:
            metric.int_value = number & 0xFFFFFFFF
        else:
            metric.long_value = number & 0xFFFFFFFFFFFFFFFF


def get(metric: Payload.Metric) -> Value:
    """The value a metric carries, as Python (signed for the signed integer types)."""
    if metric.is_null:
        return None
    field = metric.WhichOneof("value")
    if field is None:
        return None
    raw = getattr(metric, field)
    bounds = _INT_RANGE.get(metric.datatype)
    if field in ("int_value", "long_value") and bounds is not None and bounds[0] < 0:
        width = 32 if field == "int_value" else 64
        if raw >= 2 ** (width - 1):
            raw -= 2**width
    return raw  # type: ignore[no-any-return]
