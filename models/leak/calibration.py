"""A new baseline version for one hydrophone from the checks it stored, on request: the
`leak_calibration` signed command (through `LeakFactory.calibrate`) and
`edge-agent models calibrate leak --sensor S --from T --to T`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from water_edge.core.instants import iso, range_ns
from water_edge.core.processor import CalibrationFailedError
from water_edge.models.leak.baseline import Baseline, BaselineError
from water_edge.models.leak.config import LeakModelSection
from water_edge.models.leak.store import SensorStore, sensor_dir


def section_for(sections: Sequence[LeakModelSection], sensor: str) -> LeakModelSection:
    """The `[[models.leak]]` table whose device the sensor (`<device>.<channel>`) belongs to."""
    device = sensor.rsplit(".", 1)[0]
    for section in sections:
        if section.device == device and "." in sensor:
            return section
    known = ", ".join(f"{s.device}.<channel>" for s in sections) or "none"
    raise CalibrationFailedError(f"no leak sensor {sensor!r} configured (sensors: {known})")


def no_such_channel(sensor: str, channels: Sequence[str] | None, state_dir: Path) -> str | None:
    """Why `sensor` (`<device>.<channel>`) is no hydrophone: its channel is not one of `channels`
    (the ones its table listens to, as the gateway names them; None: not known), said with the ones
    there are, where otherwise "no baseline yet" or "no night checks yet" would send the technician
    waiting for nights that never come. A channel with stored state (one since removed from the
    config) is still calibrated and replayed. For the `leak_calibration` command and the CLI."""
    device, _, channel = sensor.rpartition(".")
    if channels is None or channel in channels or sensor_dir(state_dir, sensor).exists():
        return None
    listed = ", ".join(f"{device}.{c}" for c in channels) or "none"
    where = f"no hydrophone on channel {channel!r} of {device!r}"
    return f"no leak sensor {sensor!r}: {where} (sensors: {listed})"


def calibrate_sensor(
    sections: Sequence[LeakModelSection], state_dir: Path, sensor: str, args: Mapping[str, Any]
) -> Baseline:
    """Learn `sensor`'s baseline from its stored checks between args `from` / `to` (ISO 8601 or
    epoch seconds; default: all of them) and put it in service as the next version. Blocking (file
    I/O). `CalibrationFailedError` says why when it cannot."""
    section = section_for(sections, sensor)
    store = SensorStore(state_dir, sensor, section.keep_nights)
    if not store.checks_path.exists():
        raise CalibrationFailedError(f"no night checks for {sensor} yet (at {sensor_dir(state_dir, sensor)})")
    try:
        bounds = range_ns(args)
        checks = store.checks(bounds[0], bounds[1])
        if not checks:
            raise ValueError(f"no night checks of {sensor} in that range")
        baseline = Baseline.learn(
            checks,
            sensor=sensor,
            material=section.material,
            from_ts=iso(checks[0].start_ns),
            to_ts=iso(checks[-1].start_ns),
            spread_tol_db=section.detection.spread_tol_db,
            max_unsteady_bands=section.detection.max_unsteady_bands,
        )
        return store.save(baseline)
    except (ValueError, BaselineError) as exc:
        raise CalibrationFailedError(str(exc)) from None


def summary(b: Baseline, wanted_nights: int) -> dict[str, Any]:
    return {
        "sensor": b.sensor,
        "version": b.version,
        "nights": len(b.nights),
        "checks": b.checks,
        "from": b.from_ts,
        "to": b.to_ts,
        "quality": b.quality(wanted_nights),
        "sample_rate_hz": b.sample_rate,  # null: its nights were heard at different rates ...
        **({"sample_rates_hz": list(b.mixed_rates)} if b.mixed_rates else {}),  # ... these
    }
