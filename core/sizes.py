"""Byte sizes in config files: `268435456`, `"256MiB"` or `"250 MB"`, validated to an int of bytes."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(value: Any) -> Any:
    """Accept 268435456, "256MiB" or "250 MB" for byte sizes; leave anything else to pydantic."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError("expected a size such as 268435456, '256MiB' or '250MB'")
        unit = (match.group(2) or "b").lower()
        size = float(match.group(1)) * _UNITS[unit]
        if not math.isfinite(size):  # hundreds of digits: no float holds it
            raise ValueError("expected a size such as 268435456, '256MiB' or '250MB': this one is too large")
        return int(size)
    return value


ByteSize = Annotated[int, BeforeValidator(parse_size)]
