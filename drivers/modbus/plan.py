"""Coalesces tags into as few Modbus read requests as the device's limits allow; pure, no I/O.

Tags are grouped by (unit ID, table), sorted by address, and a neighbour joins the current
request while the request's span stays within `max_registers_per_request` (bits:
`max_bits_per_request`) and the hole before it is at most `max_gap` registers (for bit tables
`max_gap * 16` bits: a register's worth of bits costs the same two bytes on the wire). Overlapping
tags (a status word read as a uint16 and as single bits) share the request. Greedy merging in
address order gives the minimal count for contiguous tags of one width.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from water_edge.drivers.modbus.codec import BlockLayout, compile_tag
from water_edge.drivers.modbus.config import BIT_TABLES, ModbusDeviceConfig, ModbusTag, Table


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: `count` registers (or bits) of `table` from `start` on unit `unit_id`."""

    unit_id: int
    table: Table
    start: int
    count: int
    tags: tuple[tuple[ModbusTag, int], ...]  # (tag, offset from start), in address order
    layout: BlockLayout | None  # the register decoder; None for coil/discrete requests

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES


def plan_requests(config: ModbusDeviceConfig) -> list[ReadRequest]:
    """The read requests that cover every tag of `config` exactly once."""
    return plan(
        config.tags,
        default_unit=config.unit_id,
        max_registers=config.max_registers_per_request,
        max_bits=config.max_bits_per_request,
        max_gap=config.max_gap,
    )


def plan(
    tags: Sequence[ModbusTag],
    *,
    default_unit: int,
    max_registers: int,
    max_bits: int,
    max_gap: int,
) -> list[ReadRequest]:
    """Group, sort and merge `tags`; requests come out ordered by (unit, table, start)."""
    groups: dict[tuple[int, Table], list[ModbusTag]] = defaultdict(list)
    for tag in tags:
        unit = default_unit if tag.unit_id is None else tag.unit_id
        groups[(unit, tag.table)].append(tag)

    requests: list[ReadRequest] = []
    for (unit, table), members in sorted(groups.items()):
        bits = table in BIT_TABLES
        limit = max_bits if bits else max_registers
        gap = max_gap * 16 if bits else max_gap
        members.sort(key=lambda t: (t.address, t.width))
        current: list[ModbusTag] = []
        start = end = 0
        for tag in members:
            tag_end = tag.address + tag.width
            if current and tag.address - end <= gap and max(end, tag_end) - start <= limit:
                current.append(tag)
                end = max(end, tag_end)
                continue
            if current:
                requests.append(_request(unit, table, start, end - start, current))
            current, start, end = [tag], tag.address, tag_end
        if current:
            requests.append(_request(unit, table, start, end - start, current))
    return requests


def _request(unit: int, table: Table, start: int, count: int, members: list[ModbusTag]) -> ReadRequest:
    placed = tuple((tag, tag.address - start) for tag in members)
    layout = None
    if table not in BIT_TABLES:
        layout = BlockLayout.build(count, [(off, compile_tag(tag)) for tag, off in placed])
    return ReadRequest(unit, table, start, count, placed, layout)


def split_at_gaps(request: ReadRequest) -> list[ReadRequest]:
    """The request cut into gap-free runs of its tags (one request if it has no gap)."""
    runs: list[list[ModbusTag]] = []
    end = -1
    for tag, _ in request.tags:  # in address order
        if runs and tag.address <= end:
            runs[-1].append(tag)
            end = max(end, tag.address + tag.width)
        else:
            runs.append([tag])
            end = tag.address + tag.width
    if len(runs) == 1:
        return [request]
    return [_covering(request, run) for run in runs]


def halve(request: ReadRequest) -> list[ReadRequest]:
    """The request cut in two where no tag spans the cut, as near its middle as that allows (one
    request if every tag overlaps the next: a status word read as a whole and as bits)."""
    tags = [tag for tag, _ in request.tags]  # in address order
    cuts = []
    end = -1
    for i, tag in enumerate(tags):
        if i and tag.address >= end:
            cuts.append(i)
        end = max(end, tag.address + tag.width)
    if not cuts:
        return [request]
    middle = request.start + request.count / 2
    i = min(cuts, key=lambda c: abs(tags[c].address - middle))
    return [_covering(request, tags[:i]), _covering(request, tags[i:])]


def _covering(request: ReadRequest, tags: list[ModbusTag]) -> ReadRequest:
    start = min(t.address for t in tags)
    stop = max(t.address + t.width for t in tags)
    return _request(request.unit_id, request.table, start, stop - start, tags)
