"""What each sensor fault the audio driver finds in a channel's signal (`drivers.audio.faults`) means,
in words: for the driver's status and log, the level readings' reasons, and the models' events
(which may not import the driver)."""

from __future__ import annotations

from typing import Final

DESCRIPTION: Final[dict[str, str]] = {
    "silence": "digital silence",
    "dc": "a constant value (DC only)",
    "mains_hum": "mains hum only (a hydrophone disconnected at its preamp?)",
    "clipping": "saturated at full scale",
    "duplicate": "a copy of another channel",
    "dropout": "dropouts (one value for 50 ms or more: the input stalled)",
}


def describe(fault: str) -> str:
    return DESCRIPTION.get(fault, fault)
