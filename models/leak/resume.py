"""A hydrophone's warning or leak across agent restarts: the confirmation record it is kept in.

`leak_warning` / `leak` and their `leak_cleared` are a pair the centre tracks (the sensor and
`since_night`). Built from quiet at every start, a sensor raised a second `leak` for the same leak
after each restart, and a leak that ended while the agent was down was never cleared. So the
processor keeps each sensor's `Confirmation` in `leak/<sensor>/confirmation.json` (`store.py`) and
goes on from it. A record that is missing, unreadable, of another format or written for another
sensor is logged with its path and the sensor starts from quiet; one kept under another baseline
version than the one in service (a calibration while the agent was stopped) keeps its open episode
and counts the rest against the new baseline, as a calibration while running does.

The record also keeps the night since which the sensor is not heard (`signal_lost_since`), so a
restart neither sends `hydrophone_signal_lost` again for a sensor still dead nor forgets the
`hydrophone_signal_restored` of one repaired while the agent was down (a record without it, from
an older agent, reads as heard). A sensor not heard and then taken out of the config is closed at
the next start: one `leak.lost_sensor_unconfigured` line and a `hydrophone_unconfigured` event, and
its record no longer says lost, so that configured again it starts as heard.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import structlog

from water_edge.core.files import read_json_state
from water_edge.core.reading import Event
from water_edge.models.leak.judge import Confirmation
from water_edge.models.leak.store import CONFIRMATION_FORMAT, SensorStore, kept_sensors, sensor_dir

log = structlog.get_logger(__name__)


def record(
    sensor: str,
    baseline_version: int | None,
    confirmation: Confirmation,
    signal_lost_since: str | None = None,
) -> dict[str, Any]:
    """What `confirmation.json` holds for `sensor`."""
    return {
        "format": CONFIRMATION_FORMAT,
        "sensor": sensor,
        "baseline_version": baseline_version,
        "confirmation": confirmation.to_dict(),
        "signal_lost_since": signal_lost_since,
    }


def lost_since(kept: dict[str, Any] | None) -> str | None:
    """The night since which the sensor was not heard, as its record (`resumed`) kept it; None when
    it was heard, or the record has none (an older agent's) or not a night."""
    since = None if kept is None else kept.get("signal_lost_since")
    return since if isinstance(since, str) else None


def resumed(
    store: SensorStore, baseline_version: int | None, fresh: Confirmation
) -> tuple[dict[str, Any] | None, str | None]:
    """Put the stored record into `fresh` (a confirmation as configured, from quiet). Returns the
    record as read when it was used, and why it was not when there was one that could not be."""
    data = store.load_confirmation()  # None: none yet, or unreadable (logged by read_json_state)
    if data is None:
        if store.confirmation_path.exists():
            return None, f"confirmation state unreadable, judged from quiet ({store.confirmation_path})"
        return None, None
    why = None
    if not isinstance(data, dict) or data.get("format") != CONFIRMATION_FORMAT:
        why = f"not a {CONFIRMATION_FORMAT} record"
    elif data.get("sensor") != store.sensor:
        why = f"written for sensor {data.get('sensor')!r}"
    else:
        try:
            fresh.restore(data["confirmation"], counters=data.get("baseline_version") == baseline_version)
        except (KeyError, TypeError, ValueError) as exc:
            why = f"not a confirmation: {exc!r}"
    if why is not None:
        log.warning(
            "leak.confirmation_unusable", sensor=store.sensor, path=str(store.confirmation_path), reason=why
        )
        return None, f"confirmation state unusable, judged from quiet: {why} ({store.confirmation_path})"
    log.info(
        "leak.confirmation_resumed",
        sensor=store.sensor,
        state=fresh.state,
        since_night=fresh.since_night,
        baseline_version=baseline_version,
        signal_lost_since=lost_since(data),
    )
    return data, None


UNCONFIGURED_ACTION = (
    "the sensor is no longer configured: its signal-lost state is cleared (configured again, it starts "
    "as heard); its baselines and checks stay in {path}: delete that directory if it is gone for good"
)


def forget_lost(state_dir: Path, sensor: str, now_ns: int) -> Event | None:
    """For `sensor`, no longer configured: if its record says it was not heard, clear that (so that
    configured again it starts as heard, and says `hydrophone_signal_lost` anew if it still is not)
    and return `hydrophone_unconfigured`, which closes the lost signal at the centre; else None.
    Blocking. An unreadable record is left as it is (logged by read_json_state)."""
    store = SensorStore(state_dir, sensor)
    data = store.load_confirmation()
    since = lost_since(data) if isinstance(data, dict) and data.get("sensor") == sensor else None
    if since is None:
        return None
    action = UNCONFIGURED_ACTION.format(path=store.dir)
    why = store.save_confirmation({**data, "signal_lost_since": None})
    if why is not None:  # said again at the next start, when it may be written
        where = str(store.confirmation_path)
        log.error("leak.unconfigured_not_cleared", sensor=sensor, path=where, error=why)
    log.warning("leak.lost_sensor_unconfigured", sensor=sensor, since_night=since, action=action)
    detail = {"since_night": since, "reason": "no longer in the config while not heard", "action": action}
    return Event("hydrophone_unconfigured", sensor, now_ns, "info", None, detail)


def say_unconfigured(state_dir: Path, device: str, configured: set[str], now_ns: int) -> list[Event]:
    """Log the open warnings and leaks kept for sensors of `device` no longer configured: nothing
    will clear them on the gateway. A sensor of them that was not heard is closed (`forget_lost`):
    its `hydrophone_unconfigured` events are returned."""
    root = sensor_dir(state_dir, device).parent
    events: list[Event] = []
    for path in sorted(root.glob(f"{device}.*/confirmation.json")):
        sensor = path.parent.name
        if sensor in configured:
            continue
        if (closed := forget_lost(state_dir, sensor, now_ns)) is not None:
            events.append(closed)
        data = read_json_state(path, "leak.confirmation")
        kept = data.get("confirmation") if isinstance(data, dict) else None
        if not isinstance(kept, dict) or kept.get("state") not in ("warning", "leak"):
            continue
        log.warning(
            "leak.confirmation_unconfigured",
            sensor=sensor,
            state=kept["state"],
            since_night=kept.get("since_night"),
            path=str(path),
            action="the sensor is no longer configured: its open alarm is not cleared by the gateway",
        )
    return events


def forget_other_devices(state_dir: Path, devices: Collection[str], now_ns: int) -> list[Event]:
    """`forget_lost` for every sensor of a device no `[[models.leak]]` table names any more (a
    hydrophone unplugged for good and taken out of the config). Blocking."""
    events: list[Event] = []
    for sensor in kept_sensors(state_dir):
        if any(sensor.startswith(f"{device}.") for device in devices):
            continue  # its device's processor judges it (`say_unconfigured`)
        if (closed := forget_lost(state_dir, sensor, now_ns)) is not None:
            events.append(closed)
    return events
