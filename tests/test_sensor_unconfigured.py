"""A hydrophone or machine microphone taken out of the config while it was not heard.

Its lost state is kept across restarts (leak/<sensor>/confirmation.json,
machine_sound/<machine>/signal.json). Before, once its table or channel was removed (unplugged for
good), nothing said so at the next start: the centre's `*_signal_lost` stayed open for ever, and
the record stayed lost, so that the sensor configured again months later said nothing while still
dead. Now the next start says it once (a warning line and a `*_unconfigured` event, which closes
the lost signal), and the record says heard: configured again, a dead sensor is lost anew.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from structlog.testing import capture_logs

from tests.support.testing import eventually
from tests.test_leak_field import SECTION, _NoDriver, _run_nights
from tests.test_machine_sound_processor import RATE, _quick_calibrating, running
from water_edge.core.processor import ProcessorContext
from water_edge.core.reading import Event
from water_edge.models.leak.factory import LeakFactory
from water_edge.models.leak.processor import AudioLeakProcessor
from water_edge.models.leak.store import SensorStore
from water_edge.models.machine_sound.config import MachineSoundSection
from water_edge.models.machine_sound.factory import MachineSoundFactory
from water_edge.models.machine_sound.processor import MachineSoundProcessor


def _lost_since(tmp_path: Path, sensor: str) -> object:
    return json.loads(SensorStore(tmp_path, sensor).confirmation_path.read_text())["signal_lost_since"]


async def test_a_channel_taken_out_while_its_hydrophone_was_lost_is_closed_once(tmp_path: Path) -> None:
    proc = AudioLeakProcessor(SECTION, _NoDriver(), tmp_path)  # type: ignore[arg-type]
    await _run_nights(proc, [(date(2025, 3, d), 1.0) for d in (1, 2, 3)])
    events = await _run_nights(proc, [(date(2025, 3, 4), 0.0)])  # both inputs dead
    assert sorted(e.source for e in events if e.kind == "hydrophone_signal_lost") == ["hyd.A", "hyd.B"]

    only_a = SECTION.model_copy(update={"channels": ["A"]})  # hyd.B unplugged for good
    with capture_logs() as logs:
        proc = AudioLeakProcessor(only_a, _NoDriver(), tmp_path)  # type: ignore[arg-type]
        events = await _run_nights(proc, [(date(2025, 3, 5), 0.0)])
    (closed,) = [e for e in events if e.kind == "hydrophone_unconfigured"]
    assert (closed.source, closed.severity, closed.detail["since_night"]) == ("hyd.B", "info", "2025-03-04")
    assert str(SensorStore(tmp_path, "hyd.B").dir) in closed.detail["action"]
    (line,) = [entry for entry in logs if entry["event"] == "leak.lost_sensor_unconfigured"]
    assert (line["sensor"], line["since_night"], line["log_level"]) == ("hyd.B", "2025-03-04", "warning")
    assert _lost_since(tmp_path, "hyd.B") is None
    assert _lost_since(tmp_path, "hyd.A") == "2025-03-04"  # still configured, still lost

    proc = AudioLeakProcessor(only_a, _NoDriver(), tmp_path)  # type: ignore[arg-type]  # once only
    events = await _run_nights(proc, [(date(2025, 3, 6), 0.0)])
    assert not [e for e in events if e.kind == "hydrophone_unconfigured"]

    # Plugged in again, still dead: lost anew, which the centre (told it was closed) needs to hear.
    proc = AudioLeakProcessor(SECTION, _NoDriver(), tmp_path)  # type: ignore[arg-type]
    events = await _run_nights(proc, [(date(2025, 3, 7), 0.0)])
    assert [e.source for e in events if e.kind == "hydrophone_signal_lost"] == ["hyd.B"]


async def test_a_hydrophone_device_taken_out_of_the_config_while_lost_is_closed_at_the_start(
    tmp_path: Path,
) -> None:
    proc = AudioLeakProcessor(SECTION, _NoDriver(), tmp_path)  # type: ignore[arg-type]
    await _run_nights(proc, [(date(2025, 3, d), 1.0) for d in (1, 2, 3)])
    await _run_nights(proc, [(date(2025, 3, 4), 0.0)])

    # The next start: device hyd's table is gone; another hydrophone is configured.
    other = SECTION.model_copy(update={"device": "hyd2"})
    (started,) = LeakFactory([other], {"hyd2": _NoDriver()}, tmp_path).processors()
    events = await _events_at_start(started.run, lambda got: len(got) >= 2)
    assert sorted((e.kind, e.source) for e in events) == [
        ("hydrophone_unconfigured", "hyd.A"),
        ("hydrophone_unconfigured", "hyd.B"),
    ]
    assert _lost_since(tmp_path, "hyd.A") is None


async def _events_at_start(
    run: Callable[[Any, Any], Awaitable[None]], done: Callable[[list[Event]], bool]
) -> list[Event]:
    """What `run(source, emit)` emits until `done(events)`; then it is stopped."""
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    task = asyncio.ensure_future(run(None, emit))
    try:
        await eventually(lambda: done(events), within_s=30, what="the events at the start")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return events


async def test_a_machine_taken_out_while_its_microphone_was_lost_is_closed_once(tmp_path: Path) -> None:
    silence = np.zeros(60 * RATE, np.float32)
    driver, processor = _quick_calibrating(tmp_path, silence, "unplugged.wav")  # machine P2-sound
    async with running(processor, driver) as events:
        await eventually(lambda: len(events) >= 1, within_s=30, what="signal lost")
        await eventually(lambda: processor.health().clips_silent >= 2, within_s=30, what="2 silent clips")
    assert [e.kind for e in events] == ["microphone_signal_lost"]
    record = tmp_path / "machine_sound" / "P2-sound" / "signal.json"
    assert "silent_since_ns" in json.loads(record.read_text())

    # The next start: P2-sound's table is gone, another machine is configured on the microphone.
    other = MachineSoundSection.model_validate({"name": "P3-sound", "device": "mic"})
    factory = MachineSoundFactory([other], ProcessorContext(tmp_path, drivers={"mic": driver}))
    (started,) = factory.processors()
    assert isinstance(started, MachineSoundProcessor)

    def closed_events() -> list[Event]:
        return [e for e in events if e.kind == "microphone_unconfigured"]

    with capture_logs() as logs:
        async with running(started, driver) as events:
            await eventually(lambda: closed_events() != [], within_s=30, what="the machine closed")
    (closed,) = closed_events()  # P3-sound, on the same silent input, is lost itself: not asserted
    assert (closed.kind, closed.source, closed.severity) == ("microphone_unconfigured", "P2-sound", "info")
    assert str(tmp_path / "machine_sound" / "P2-sound") in closed.detail["action"]
    said = [entry for entry in logs if entry["event"] == "machine_sound.lost_microphone_unconfigured"]
    assert [(entry["machine"], entry["log_level"]) for entry in said] == [("P2-sound", "warning")]
    assert json.loads(record.read_text()) == {}  # heard: configured again, it starts as heard

    # Configured again with the microphone still unplugged: lost anew.
    driver, processor = _quick_calibrating(tmp_path, silence, "still-unplugged.wav")
    async with running(processor, driver) as events:
        await eventually(lambda: len(events) >= 1, within_s=30, what="signal lost again")
    assert [(e.kind, e.source) for e in events] == [("microphone_signal_lost", "P2-sound")]
