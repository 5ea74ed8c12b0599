"""Capped exponential backoff with full jitter, so a fleet of gateways does not reconnect in step."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError("backoff needs 0 < min_s <= max_s")
        self.min_s = min_s
        self.max_s = max_s
        self.attempts = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next_delay(self) -> float:
        """The wait before the next attempt: uniform in [min, min(max, min * 2**attempts)]."""
        ceiling = min(self.max_s, self.min_s * 2.0 ** min(self.attempts, 30))
        self.attempts += 1
        return self._rng.uniform(self.min_s, ceiling)

    def reset(self) -> None:
        self.attempts = 0
