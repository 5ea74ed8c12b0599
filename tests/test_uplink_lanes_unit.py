"""The lane scheduler on its own: plain rows in, the rows to publish next out (no broker, no loop)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from water_edge.agent.uplink.lanes import LaneScheduler
from water_edge.buffer.types import OutboxRow


def rows(*ids: int) -> list[OutboxRow]:
    return [OutboxRow(i, "plc1", i, "telemetry", 0, 1, b"") for i in ids]


def scheduler(
    split: int, window: int, backlog: Sequence[int] = (), live: Sequence[int] = ()
) -> LaneScheduler:
    """Lanes with these rows leased (a lane given no rows has not been leased yet)."""
    lanes = LaneScheduler(split, window)
    for lane, ids in ((lanes.backlog, backlog), (lanes.live, live)):
        if ids:
            lanes.add(lane, rows(*ids))
    return lanes


def picked(plan: Sequence[tuple[str, OutboxRow]]) -> list[tuple[str, int]]:
    return [(lane, row.id) for lane, row in plan]


def test_live_goes_first_and_a_quarter_of_the_window_stays_with_the_backlog() -> None:
    lanes = scheduler(100, 8, backlog=list(range(1, 21)), live=list(range(101, 111)))
    plan = picked(lanes.plan([]))
    assert plan == [("live", i) for i in range(101, 107)] + [("backlog", 1), ("backlog", 2)]


def test_the_reserve_is_at_least_one_slot_even_in_a_window_of_one() -> None:
    lanes = scheduler(10, 1, backlog=[1, 2], live=[11])
    assert picked(lanes.plan([])) == [("backlog", 1)]


def test_rows_in_flight_count_against_their_lane() -> None:
    lanes = scheduler(100, 8, backlog=list(range(10, 20)), live=list(range(106, 120)))
    inflight = rows(101, 102, 103, 104, 105, 1)  # five live, one backlog
    assert picked(lanes.plan(inflight)) == [("live", 106), ("backlog", 10)]


def test_a_full_window_plans_nothing() -> None:
    lanes = scheduler(100, 4, backlog=[1], live=[101])
    assert lanes.plan(rows(1, 2, 3, 4)) == []
    assert not lanes.live_wants_rows(inflight=4)


def test_with_no_backlog_rows_leased_live_may_use_the_whole_window() -> None:
    lanes = scheduler(100, 8, live=list(range(101, 111)))
    assert lanes.backlog.active, "the backlog has not been leased yet"
    assert picked(lanes.plan([])) == [("live", i) for i in range(101, 109)]


def test_a_backlog_alone_uses_the_whole_window() -> None:
    lanes = scheduler(100, 4, backlog=list(range(1, 11)))
    assert picked(lanes.plan([])) == [("backlog", i) for i in (1, 2, 3, 4)]


def test_each_lane_goes_out_in_id_order_across_plans() -> None:
    lanes = scheduler(50, 4, backlog=list(range(1, 13)), live=list(range(51, 63)))
    seen: list[tuple[str, int]] = []
    while lanes.has_pending:
        seen += picked(lanes.plan([]))
    for lane in ("live", "backlog"):
        ids = [i for name, i in seen if name == lane]
        assert ids == sorted(ids)
        assert len(ids) == 12


def test_the_split_divides_the_lanes() -> None:
    lanes = LaneScheduler(41, 8)
    assert (lanes.backlog.cursor, lanes.backlog.upto) == (0, 41)
    assert (lanes.live.cursor, lanes.live.upto) == (41, None)
    assert not lanes.is_live(rows(41)[0])
    assert lanes.is_live(rows(42)[0])


def test_leases_advance_the_cursor_and_an_empty_one_ends_only_the_backlog() -> None:
    lanes = LaneScheduler(10, 8)
    assert lanes.backlog_wants_rows()
    lanes.add(lanes.backlog, rows(3, 4, 7))
    assert lanes.backlog.cursor == 7
    assert not lanes.backlog_wants_rows(), "rows are still pending"
    lanes.plan([])
    lanes.add(lanes.backlog, [])
    assert not lanes.backlog.active
    assert not lanes.backlog_wants_rows()
    lanes.add(lanes.live, [])
    assert lanes.live.active, "the live lane never ends: new rows keep coming"
    assert lanes.live_wants_rows(inflight=0)
    assert lanes.exhausted


def test_a_window_must_hold_one_row() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LaneScheduler(0, 0)
