"""argparse types for the numbers a user types on the command line: finite and in range, or a usage
error that names the flag and what was expected (argparse: "argument --days: expected a whole number
from 1, got '-1'", exit code 2) — never a traceback, a NaN that flows into the output, or a
negative period taken at face value.

    parser.add_argument("--days", type=whole(1), default=365)
    parser.add_argument("--diameter", type=number(10, 3000), default=150.0)
    parser.add_argument("--average-minutes", type=number(above=0), default=15.0)

The bounds are those of the matching config key where there is one, so a value the CLI takes is one
the gateway would take too.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _bounds(low: float | None, high: float | None, above: float | None) -> str:
    if above is not None:
        return f"above {above:g}" + ("" if high is None else f" up to {high:g}")
    if low is not None and high is not None:
        return f"from {low:g} to {high:g}"
    if low is not None:
        return f"from {low:g}"
    return "" if high is None else f"up to {high:g}"


def number(
    low: float | None = None, high: float | None = None, *, above: float | None = None
) -> Callable[[str], float]:
    """A finite number in [low, high] (or > `above`)."""
    wanted = " ".join(["a number", _bounds(low, high, above)]).strip()

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if (
            not math.isfinite(value)
            or (low is not None and value < low)
            or (high is not None and value > high)
            or (above is not None and value <= above)
        ):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


def whole(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """A whole number in [low, high]."""
    wanted = " ".join(["a whole number", _bounds(low, high, None)]).strip()

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse
