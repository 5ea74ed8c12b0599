"""Sparkplug B integer metrics: each datatype carries its whole range exactly and nothing past it,
so a host never reads a wrapped value."""

from __future__ import annotations

import pytest

from water_edge.agent.uplink.sparkplug import datatypes
from water_edge.agent.uplink.sparkplug.proto import DataType, Payload

RANGES: dict[int, tuple[int, int]] = {
    DataType.Int8: (-(2**7), 2**7 - 1),
    DataType.Int16: (-(2**15), 2**15 - 1),
    DataType.Int32: (-(2**31), 2**31 - 1),
    DataType.Int64: (-(2**63), 2**63 - 1),
    DataType.UInt8: (0, 2**8 - 1),
    DataType.UInt16: (0, 2**16 - 1),
    DataType.UInt32: (0, 2**32 - 1),
    DataType.UInt64: (0, 2**64 - 1),
}


def round_trip(datatype: int, value: int) -> object:
    metric = Payload.Metric(name="m", datatype=datatype)
    datatypes.put(metric, datatype, value)
    wire = Payload(metrics=[metric]).SerializeToString()
    return datatypes.get(Payload.FromString(wire).metrics[0])


@pytest.mark.parametrize("datatype", list(RANGES), ids=[DataType.Name(d) for d in RANGES])
def test_an_integer_datatype_carries_its_range_and_refuses_past_it(datatype: int) -> None:
    lo, hi = RANGES[datatype]
    for value in (lo, lo + 1, -1, 0, 1, hi - 1, hi):
        if lo <= value <= hi:
            assert datatypes.fits(datatype, value), value
            assert round_trip(datatype, value) == value
    assert not datatypes.fits(datatype, lo - 1)
    assert not datatypes.fits(datatype, hi + 1)
    assert datatypes.fits(datatype, float(hi // 2))  # a whole float is the integer it holds
    assert not datatypes.fits(datatype, 0.5)


def test_an_integer_past_int64_goes_out_as_uint64_or_double_never_wrapped() -> None:
    assert datatypes.of_value(2**63 - 1) == DataType.Int64
    assert datatypes.of_value(2**63) == DataType.UInt64  # an Int64 would go out negative
    assert datatypes.of_value(2**64) == DataType.Double
    assert datatypes.of_value(-(2**63)) == DataType.Int64
