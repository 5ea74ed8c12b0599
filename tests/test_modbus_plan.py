"""Request planning: every tag exactly once, limits kept, minimal requests, groups never mixed."""

from __future__ import annotations

import itertools
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from water_edge.drivers.modbus.config import ModbusTag
from water_edge.drivers.modbus.plan import ReadRequest, plan


def mk(i: int, **kw: Any) -> ModbusTag:
    return ModbusTag.model_validate({"name": f"t{i}", **kw})


def run(
    tags: list[ModbusTag], max_registers: int = 125, max_bits: int = 2000, max_gap: int = 8
) -> list[ReadRequest]:
    return plan(tags, default_unit=1, max_registers=max_registers, max_bits=max_bits, max_gap=max_gap)


def test_contiguous_float32_tags_need_the_minimum() -> None:
    tags = [mk(i, table="input", address=2 * i, type="float32") for i in range(10_000)]
    requests = run(tags)
    assert len(requests) == math.ceil(10_000 / 62)  # 62 float32 fit in 125 registers
    assert all(r.count <= 125 for r in requests)


def test_gap_splits_and_small_gap_merges() -> None:
    tags = [mk(0, address=0), mk(1, address=9), mk(2, address=30)]
    requests = run(tags, max_gap=8)
    assert [(r.start, r.count) for r in requests] == [(0, 10), (30, 1)]
    assert [(r.start, r.count) for r in run(tags, max_gap=0)] == [(0, 1), (9, 1), (30, 1)]


def test_unit_ids_and_tables_are_never_mixed() -> None:
    tags = [
        mk(0, address=0),
        mk(1, address=1, unit_id=2),
        mk(2, address=2, table="input"),
        mk(3, address=0, table="coil", type="bool"),
        mk(4, address=1, table="discrete", type="bool"),
        mk(5, address=1, unit_id=1),
    ]
    requests = run(tags)
    assert {(r.unit_id, r.table) for r in requests} == {
        (1, "holding"), (2, "holding"), (1, "input"), (1, "coil"), (1, "discrete"),
    }  # fmt: skip
    holding_1 = next(r for r in requests if (r.unit_id, r.table) == (1, "holding"))
    assert [t.name for t, _ in holding_1.tags] == ["t0", "t5"]


def test_bits_use_the_bit_limit() -> None:
    tags = [mk(i, table="coil", type="bool", address=i) for i in range(5000)]
    requests = run(tags)
    assert [r.count for r in requests] == [2000, 2000, 1000]
    assert all(r.layout is None for r in requests)


def test_overlapping_tags_share_a_request() -> None:
    tags = [
        mk(0, address=16, type="uint16"),
        mk(1, address=16, type="bit", bit=0),
        mk(2, address=16, type="bit", bit=1),
    ]
    (request,) = run(tags)
    assert (request.start, request.count) == (16, 1)
    assert [off for _, off in request.tags] == [0, 0, 0]


TYPES = ["uint16", "int32", "float32", "float64", "string", "bool", "bit"]


@st.composite
def tag_lists(draw: st.DrawFn) -> list[ModbusTag]:
    tags = []
    for i in range(draw(st.integers(1, 60))):
        kind = draw(st.sampled_from(TYPES))
        kw: dict[str, Any] = {"type": kind, "address": draw(st.integers(0, 400))}
        kw["unit_id"] = draw(st.sampled_from([None, 1, 2, 7]))
        if kind == "bool":
            kw["table"] = draw(st.sampled_from(["coil", "discrete"]))
        else:
            kw["table"] = draw(st.sampled_from(["holding", "input"]))
        if kind == "bit":
            kw["bit"] = draw(st.integers(0, 15))
        if kind == "string":
            kw["length"] = draw(st.integers(1, 10))
        tags.append(mk(i, **kw))
    return tags


@settings(max_examples=200)
@given(tag_lists(), st.integers(10, 125), st.integers(16, 2000), st.integers(0, 20))
def test_plan_properties(tags: list[ModbusTag], max_regs: int, max_bits: int, gap: int) -> None:
    requests = run(tags, max_registers=max_regs, max_bits=max_bits, max_gap=gap)
    covered = [t.name for r in requests for t, _ in r.tags]
    assert sorted(covered) == sorted(t.name for t in tags)  # every tag exactly once
    for r in requests:
        limit = max_bits if r.is_bits else max_regs
        assert 1 <= r.count <= limit
        for t, off in r.tags:
            assert (t.unit_id or 1) == r.unit_id
            assert t.table == r.table
            assert t.address == r.start + off
            assert off + t.width <= r.count
    # requests of one group come out in address order
    for a, b in itertools.pairwise(requests):
        if (a.unit_id, a.table) == (b.unit_id, b.table):
            assert b.start >= a.start
