"""Durations in config files: a number of seconds (`86400`) or text with a unit (`"24h"`, `"10min"`,
`"7d"`, `"30s"`), validated to a float of seconds."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|min|m|h|d)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "min": 60, "m": 60, "h": 3600, "d": 86400}
EXPECTED = "expected a duration such as 3600 (seconds), '30s', '10min', '24h' or '7d'"


def parse_duration(value: Any) -> Any:
    """Accept 3600, "30s", "10min" (or "10m"), "24h" or "7d"; leave anything else to pydantic."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(EXPECTED)
        seconds = float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
        if not math.isfinite(seconds):
            raise ValueError(f"{EXPECTED}: this one is too large")
        return seconds
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
