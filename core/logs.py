"""structlog set-up: JSON lines under systemd (no TTY), a readable console renderer on a terminal."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import structlog

from water_edge.core.redact import RedactingProcessor


class _CurrentStderr:
    """Writes to whatever sys.stderr is now, so a logger cached on first use never holds a file
    that was since replaced and closed (test capture, a CLI redirecting output)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", json: bool | None = None, secrets: Sequence[str] = ()) -> None:
    """Route structlog to stderr; `json=None` picks JSON when stderr is not a terminal."""
    if json is None:
        json = not sys.stderr.isatty() or "JOURNAL_STREAM" in os.environ
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            RedactingProcessor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
