"""Instants as people and commands write them: ISO 8601 (UTC when no zone is given) or epoch
seconds, and the `from` / `to` range a calibration command takes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from water_edge.core.processor import CalibrationFailedError


def iso(ts_ns: int) -> str:
    """UTC nanoseconds -> ISO 8601 to the second, with its offset (`2026-03-04T02:13:20+00:00`)."""
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat(timespec="seconds")


def minute_utc(ts_ns: int) -> str:
    """UTC nanoseconds -> the minute, as a status line writes it (`2026-03-04 02:13 UTC`)."""
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M UTC")


# Epoch seconds up to the end of year 9999 (what ISO 8601 can write). Past it is no instant: often
# epoch milliseconds, as many SCADA exports write them (1733400000000).
MAX_EPOCH_S = 253_402_300_799


def instant_ns(text: str) -> int:
    """ISO 8601 (UTC when no zone is given) or epoch seconds -> UTC nanoseconds."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not 0 <= seconds <= MAX_EPOCH_S:  # NaN fails this too
            millis = MAX_EPOCH_S < seconds <= MAX_EPOCH_S * 1000
            hint = " (epoch milliseconds? divide by 1000)" if millis else ""
            raise ValueError(f"{text!r} is not a time: epoch seconds run 0..{MAX_EPOCH_S}{hint}")
        return int(seconds * 1e9)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a time: use ISO 8601 or epoch seconds") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1e9)


def stretch(args: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """`range_ns` for a command that reports `CalibrationFailedError` (a replay, a calibration)."""
    try:
        return range_ns(args)
    except ValueError as exc:
        raise CalibrationFailedError(str(exc)) from None


def range_ns(args: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """A command's optional `from` and `to` in UTC nanoseconds; `ValueError` if `to` is not after `from`."""
    start, end = (None if args.get(k) is None else instant_ns(str(args[k])) for k in ("from", "to"))
    if start is not None and end is not None and end <= start:
        raise ValueError("'to' must be after 'from'")
    return start, end
