"""A hydrophone's warning or leak across agent restarts: raised once, cleared once, paired by
`since_night` — however often the gateway restarts while the leak lasts or ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Callable
from datetime import date
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.test_leak_field import SECTION, _night_windows, _NoDriver, _pipe_scene, _Window
from water_edge.core.reading import Event
from water_edge.models.leak.processor import AudioLeakProcessor
from water_edge.models.leak.store import SensorStore

pytestmark = pytest.mark.slow

LEAK_M = 40.0  # from hydrophone A, on the 100 m between A and B
ALARMS = ("leak_warning", "leak", "leak_cleared")


def _night(day: int) -> date:
    return date(2025, 3, day)


async def _run_then_stop(
    state_dir: Path,
    plan: list[tuple[int, float | None]],
    before_night: Callable[[int], None] = lambda day: None,
) -> list[Event]:
    """A processor on `state_dir` hears the nights of `plan` (day of March, leak position or None),
    then is stopped as the agent stops it: its task cancelled while it waits for the next window."""
    events: list[Event] = []
    heard = asyncio.Event()

    async def emit(e: Event) -> None:
        events.append(e)

    async def windows() -> AsyncIterator[_Window]:
        for day, leak in plan:
            before_night(day)
            for w in _night_windows(_night(day), _pipe_scene(day, leak), 125):
                yield w
        heard.set()
        await asyncio.Event().wait()  # live audio: the next window has not come when the agent stops

    proc = AudioLeakProcessor(SECTION, _NoDriver(), state_dir)  # type: ignore[arg-type]
    task = asyncio.create_task(proc.consume(windows(), emit))
    await heard.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return events


@pytest.fixture(scope="module")
def leak_raised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """Four quiet nights (the baseline learnt on the first three), a leak on the fifth, the agent
    then stopped: its state directory and the sensors that raised `leak` for it. Heard once for the
    module (every test starts from it); read only: each test goes on from its own copy."""
    state_dir = tmp_path_factory.mktemp("leak_raised")
    plan: list[tuple[int, float | None]] = [(1, None), (2, None), (3, None), (4, None), (5, LEAK_M)]
    events = asyncio.run(_run_then_stop(state_dir, plan))
    leaks = {e.source for e in events if e.kind == "leak"}
    assert "hyd.A" in leaks
    assert all(e.detail["since_night"] == "2025-03-05" for e in events if e.kind in ALARMS)
    return state_dir, leaks


def _going_on_from(leak_raised: tuple[Path, set[str]], state_dir: Path) -> set[str]:
    """`state_dir` as the agent left it after the leak of the 5th (`leak_raised`): the sensors that
    raised `leak` for it. A copy of the state directory is the stopped agent's whole state (its
    paths inside are relative): the restart tests go on from there as a restarted agent does."""
    raised, leaks = leak_raised
    shutil.copytree(raised, state_dir, dirs_exist_ok=True)
    return set(leaks)


def _alarms(events: list[Event]) -> list[tuple[str, str, str | None]]:
    return [(e.kind, e.source, e.detail["since_night"]) for e in events if e.kind in ALARMS]


async def test_a_leak_raised_before_a_restart_is_not_raised_again_and_is_cleared_once_after_it(
    tmp_path: Path, leak_raised: tuple[Path, set[str]]
) -> None:
    leaks = _going_on_from(leak_raised, tmp_path)

    # Restarted with the leak still there: no second warning, no second leak.
    events = await _run_then_stop(tmp_path, [(6, LEAK_M)])
    assert _alarms(events) == []

    # Restarted again; the leak is repaired: two quiet nights clear it, as the third begins —
    # once per sensor, paired with the leak by its first night.
    events = await _run_then_stop(tmp_path, [(7, None), (8, None), (9, None)])
    assert sorted(_alarms(events)) == sorted(("leak_cleared", s, "2025-03-05") for s in leaks)
    assert all(e.detail["reason"] == "quiet nights" for e in events if e.kind == "leak_cleared")

    # A leak that comes back later is a new one: warned and raised again, from its own night.
    events = await _run_then_stop(tmp_path, [(10, LEAK_M)])
    assert ("leak_warning", "hyd.A", "2025-03-10") in _alarms(events)
    assert ("leak", "hyd.A", "2025-03-10") in _alarms(events)


async def test_a_leak_repaired_while_the_agent_was_down_is_cleared_after_it(
    tmp_path: Path, leak_raised: tuple[Path, set[str]]
) -> None:
    leaks = _going_on_from(leak_raised, tmp_path)
    # The agent is down on the 6th and 7th; the pipe is repaired meanwhile.
    events = await _run_then_stop(tmp_path, [(8, None), (9, None), (10, None)])
    assert sorted(_alarms(events)) == sorted(("leak_cleared", s, "2025-03-05") for s in leaks)


async def test_a_leak_that_ends_as_a_new_one_begins_is_cleared_before_the_new_warning(
    tmp_path: Path, leak_raised: tuple[Path, set[str]]
) -> None:
    # Two quiet nights end the leak as the 9th begins; its first check is a leak again. Before,
    # the new warning took the clear's place and the first leak stayed open at the centre.
    _going_on_from(leak_raised, tmp_path)
    events = await _run_then_stop(tmp_path, [(7, None), (8, None), (9, LEAK_M)])
    a = [(kind, since) for kind, source, since in _alarms(events) if source == "hyd.A"]
    assert a[:2] == [("leak_cleared", "2025-03-05"), ("leak_warning", "2025-03-09")]


@pytest.mark.parametrize("calibrated_on", [7, 8], ids=["agent stopped", "agent running"])
async def test_a_recalibration_during_a_leak_keeps_it_open_until_the_new_baseline_clears_it(
    tmp_path: Path, leak_raised: tuple[Path, set[str]], calibrated_on: int
) -> None:
    # `models calibrate leak` after the repair, before the agent starts again or while it runs.
    # Before, a new baseline started the sensor from quiet: the leak was never cleared.
    leaks = _going_on_from(leak_raised, tmp_path)

    def calibrate(day: int) -> None:
        if day == calibrated_on:
            for sensor in leaks:
                store = SensorStore(tmp_path, sensor)
                store.save(store.in_service())

    events = await _run_then_stop(tmp_path, [(7, None), (8, None), (9, None)], calibrate)
    assert sorted(_alarms(events)) == sorted(("leak_cleared", s, "2025-03-05") for s in leaks)


async def test_a_damaged_confirmation_record_is_named_and_the_sensor_judged_from_quiet(
    tmp_path: Path, leak_raised: tuple[Path, set[str]]
) -> None:
    _going_on_from(leak_raised, tmp_path)
    a, b = SensorStore(tmp_path, "hyd.A"), SensorStore(tmp_path, "hyd.B")
    a.confirmation_path.write_bytes(b"\xff\xfe\x9c\x00" * 16)  # a damaged card
    kept = json.loads(b.confirmation_path.read_text(encoding="utf-8"))
    b.confirmation_path.write_text(json.dumps({**kept, "format": "leak-confirmation/99"}), encoding="utf-8")

    with capture_logs() as logs:
        proc = AudioLeakProcessor(SECTION, _NoDriver(), tmp_path)  # type: ignore[arg-type]

        async def one_window() -> AsyncIterator[_Window]:
            yield _night_windows(_night(6), _pipe_scene(6), 1)[0]  # the night's first window, 2 s rendered

        await proc.consume(one_window(), _ignore)
    lines = proc.health().status_lines()
    assert any(line.startswith("hyd.A: confirmation state unreadable, judged from quiet") for line in lines)
    unusable = "hyd.B: confirmation state unusable, judged from quiet: not a leak-confirmation/1 record"
    assert any(line.startswith(unusable) for line in lines)
    assert proc.health().sensors["hyd.A"].state == "armed"
    unreadable = [e for e in logs if e["event"] == "leak.confirmation.unreadable"]
    assert [e["path"] for e in unreadable] == [str(a.confirmation_path)]
    unusable_logged = [e["path"] for e in logs if e["event"] == "leak.confirmation_unusable"]
    assert unusable_logged == [str(b.confirmation_path)]

    # It goes on from quiet and stores a good record again at its next change.
    events = await _run_then_stop(tmp_path, [(6, LEAK_M)])
    assert ("leak", "hyd.A", "2025-03-06") in _alarms(events)
    assert json.loads(a.confirmation_path.read_text(encoding="utf-8"))["confirmation"]["state"] == "leak"


async def test_an_open_leak_of_a_sensor_no_longer_configured_is_logged(
    tmp_path: Path, leak_raised: tuple[Path, set[str]]
) -> None:
    leaks = _going_on_from(leak_raised, tmp_path)
    only_a = SECTION.model_copy(update={"channels": ["A"]})
    with capture_logs() as logs:
        proc = AudioLeakProcessor(only_a, _NoDriver(), tmp_path)  # type: ignore[arg-type]

        async def one_window() -> AsyncIterator[_Window]:
            yield _night_windows(_night(6), _pipe_scene(6), 1)[0]  # the night's first window, 2 s rendered

        await proc.consume(one_window(), _ignore)
    said = [(e["sensor"], e["since_night"]) for e in logs if e["event"] == "leak.confirmation_unconfigured"]
    assert said == [(s, "2025-03-05") for s in sorted(leaks - {"hyd.A"})]


async def _ignore(_: Event) -> None:
    return None
