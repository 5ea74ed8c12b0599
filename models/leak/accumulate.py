"""Evidence accumulated over checks: a weak leak that persists reaches a leak no single check shows.

A leak is a persistent change; each night's nuisance (a little more flow noise, a passing truck) is
not. `Accumulation` keeps a one-sided CUSUM of a metal pipe's joint leak-band statistic
(`Judgement.joint_u`: the joint z of the leak band's unexplained rise, standardised by its own
leave-one-out spread on the baseline's checks, so a sensor whose quiet wanders more needs more):

    S = max(0, S + u - k)        reached when S >= h

`k` (the reference value, in spreads) is what a check must exceed to add anything: a quiet check
subtracts, so checks wandering within the baseline's spread do not build up. The checks of one
night share its nuisance (on leak-free dev nights two checks of one night correlate at 0.89,
consecutive nights at 0.05), so a run counts only once it reaches into a later night. A disturbed or
unjudged check (rain, works) is skipped, not counted either way. A slow seasonal drift would add a
little every check for months; so the sum only looks back `nights` nights: when the run began
earlier, it restarts from the current check (a real leak reaches `h` within its first nights, the
target's "within 2 nights"; a drift that slow is the recalibration's business).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any


@dataclass
class Accumulation:
    """One sensor's CUSUM over judged checks (see the module docstring); `h <= 0` turns it off."""

    k: float = 1.0
    h: float = 2.0
    nights: int = 2
    value: float = 0.0
    checks: int = 0  # checks in the current run (S > 0)
    since_night: str | None = None

    def update(self, night: str, u: float | None) -> bool:
        """Add one judged check's standardised statistic (None: nothing to add, e.g. a plastic
        pipe or a disturbed check); True when the accumulated evidence reaches `h`."""
        if self.h <= 0 or u is None:
            return False
        if self.since_night is not None and _days(self.since_night, night) >= self.nights:
            self.reset()
        self.value = max(0.0, self.value + u - self.k)
        if self.value <= 0.0:
            self.reset()
            return False
        if self.since_night is None:
            self.since_night = night
        self.checks += 1
        # The checks of one night share its nuisance (the night's flow noise, its traffic): only a
        # run that has lasted into a later night is a persistent change.
        return self.value >= self.h and self.since_night != night

    def reset(self) -> None:
        self.value, self.checks, self.since_night = 0.0, 0, None

    def to_dict(self) -> dict[str, Any]:
        """The run in progress (`k`, `h` and `nights` are the configuration's)."""
        return {"value": self.value, "checks": self.checks, "since_night": self.since_night}

    def restore(self, data: dict[str, Any]) -> None:
        """Go on with a run `to_dict` kept; `ValueError` when `data` is not one."""
        value, checks, since = data["value"], data["checks"], data["since_night"]
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not 0.0 <= value < float("inf")
            or not isinstance(checks, int)
            or isinstance(checks, bool)
            or checks < 0
            or not (since is None or isinstance(since, str))
        ):
            raise ValueError(f"not an accumulated run: {data!r}")
        self.value, self.checks, self.since_night = float(value), checks, since

    def evidence(self) -> dict[str, Any]:
        return {
            "value": round(self.value, 2),
            "threshold": self.h,
            "checks": self.checks,
            "since_night": self.since_night,
        }


def _days(a: str, b: str) -> int:
    try:
        return (date.fromisoformat(b) - date.fromisoformat(a)).days
    except ValueError:
        return 0 if a == b else 1
