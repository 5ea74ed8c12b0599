"""A machine's stored clips scored again: `edge-agent models score machine-sound --machine M [--from T]
[--to T]`, one JSON object per clip — what an engineer reads before trusting a
`machine_sound_anomaly` event, or before recalibrating after maintenance: when the scores rose,
which feature groups moved, and where the event rule raised and cleared.

The clips are the features the gateway kept (`<state_dir>/machine_sound/<name>/`: clips heard
while the machine ran; silent and stopped ones are not kept), scored against the calibration in
service now (a clip scored live under an older version may read otherwise here) through the
machine's own event rule (`alarm.py`), from not raised at the first clip given.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from water_edge.core.instants import iso, stretch
from water_edge.core.processor import CalibrationFailedError
from water_edge.models.machine_sound.alarm import sound_alarm
from water_edge.models.machine_sound.config import MachineSoundSection
from water_edge.models.machine_sound.detector import SoundCalibration
from water_edge.models.machine_sound.offline import scored_rows
from water_edge.models.machine_sound.store import SoundCalibrationStore, machine_dir, open_history
from water_edge.models.manifest import ModelError


def replay_machine(
    section: MachineSoundSection, state_dir: Path, args: Mapping[str, Any]
) -> tuple[SoundCalibration, Iterator[dict[str, Any]]]:
    """The calibration in service and, per stored clip between args `from` / `to` (ISO 8601 or epoch
    s; default all): `ts`, `score`, `anomaly`, the evidence of an anomalous clip, `alarm` (raised
    after it) and `event` (`raised` / `cleared` on the clip that did it). `CalibrationFailedError`
    says why when it cannot."""
    where = machine_dir(state_dir, section.name)
    cal = SoundCalibrationStore(state_dir, section.name).in_service(f"machine {section.name}")
    bounds = stretch(args)
    try:
        with open_history(state_dir, section.name, section.history_days, create=False) as history:
            ts, x = history.read(*bounds)
    except (ValueError, ModelError) as exc:
        raise CalibrationFailedError(f"machine {section.name}: {exc}") from None
    if len(ts) == 0:
        raise CalibrationFailedError(f"no stored clips of machine {section.name} in that range (at {where})")
    alarm = sound_alarm(section)

    def clips() -> Iterator[dict[str, Any]]:
        for t, row in zip(ts, scored_rows(cal, x), strict=True):
            change = None if row["score"] is None else alarm.update(int(t), float(row["score"]))
            event = None if change is None else ("raised" if change else "cleared")
            yield {"ts": iso(int(t)), **row, "alarm": alarm.active, "event": event}

    return cal, clips()
