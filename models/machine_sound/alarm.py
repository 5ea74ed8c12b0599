"""When a machine's clip scores make an event: raised when `on_clips` of the last `of_clips` clips
score above 1, cleared after `off_clips` in a row below `hysteresis` — a fault persists, a passing
noise (a door, a forklift) does not. The processor and `models score machine-sound --machine`'s
replay keep the same state."""

from __future__ import annotations

from collections import deque

from water_edge.models.machine_sound.config import MachineSoundSection


class SoundAlarm:
    """Raise when `on` of the last `of` scores are above 1; clear after `off` in a row below
    `hysteresis`. Remembers when the clips that raised it began."""

    def __init__(self, on: int, of: int, off: int, hysteresis: float) -> None:
        self.on, self.of, self.off, self.hysteresis = on, of, off, hysteresis
        self.active = False
        self.recent: deque[tuple[int, bool]] = deque(maxlen=of)
        self._below = 0
        self.since_ns: int | None = None

    def update(self, ts_ns: int, score: float) -> bool | None:
        """True when the alarm rises, False when it clears, None otherwise."""
        above = score > 1.0
        self.recent.append((ts_ns, above))
        if not self.active:
            if sum(a for _, a in self.recent) >= self.on:
                self.active, self._below = True, 0
                self.since_ns = next(ts for ts, a in self.recent if a)
                return True
            return None
        self._below = self._below + 1 if score < self.hysteresis else 0
        if self._below >= self.off:
            self.active = False
            self.recent.clear()
            return False
        return None


def sound_alarm(section: MachineSoundSection) -> SoundAlarm:
    """The alarm a `[[models.machine_sound]]` table configures, not raised."""
    return SoundAlarm(section.on_clips, section.of_clips, section.off_clips, section.hysteresis)
