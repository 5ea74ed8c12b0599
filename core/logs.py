"""structlog set-up: JSON lines under systemd (no TTY), a readable console renderer on a terminal.

Libraries that log through the standard `logging` module (pymodbus, asyncua, paho) are routed
through the same renderer, so the agent's log holds one format only (no bare `Failed to connect`
line among the JSON). The libraries whose failures the drivers already report in their own words
(`QUIET_LIBRARIES`) are heard only at `debug`, those that narrate their work at info
(`CHATTY_LIBRARIES`) from `warning` up unless the level is `debug`. Both kinds of line pass one
flood guard (`core.log_flood`): at most a burst of lines of one kind per window, the rest counted.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import structlog

from water_edge.core.log_flood import DEFAULT_BURST, DEFAULT_WINDOW_S, FloodGuard
from water_edge.core.redact import RedactingProcessor


class _CurrentStderr:
    """Writes to whatever sys.stderr is now, so a logger cached on first use never holds a file
    that was since replaced and closed (test capture, a CLI redirecting output)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


# pymodbus logs every failed connect and retry ("Failed to connect ...", "Repeating....") at error
# level; the Modbus drivers raise, count and report the same failure (a bad reading, driver.down).
QUIET_LIBRARIES = ("pymodbus",)
# asyncua narrates every connection at info: each step, and one `find_endpoint` record holding every
# endpoint with the server's whole certificate (about 13 KB per connect, again at each reconnect).
# The OPC UA driver says `opcua.connected` in one line; asyncua's info is heard at `debug`, its
# warnings always.
CHATTY_LIBRARIES = ("asyncua",)
# What asyncua says when the connection under it is already gone: a traceback at error level from
# its publish loop ("Publish iteration crashed") and a warning per teardown step at every reconnect
# attempt ("close_secure_channel was called but connection is closed"). The OPC UA driver reports
# that loss itself (`opcua.connection_lost`, `driver.down`); these are heard at `debug` only.
DEAD_CONNECTION_NEWS = ("was called but connection is closed",)


class AsyncuaDeadConnectionFilter(logging.Filter):
    """Leaves out asyncua's records about a connection already lost (see DEAD_CONNECTION_NEWS)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("asyncua"):
            return True
        if record.exc_info and isinstance(record.exc_info[1], ConnectionError):
            return False
        message = record.getMessage()
        return not any(news in message for news in DEAD_CONNECTION_NEWS)


def configure(
    level: str = "info",
    json: bool | None = None,
    secrets: Sequence[str] = (),
    flood_burst: int = DEFAULT_BURST,
    flood_window_s: float = DEFAULT_WINDOW_S,
) -> None:
    """Route structlog and the standard library's logging to stderr; `json=None` picks JSON when
    stderr is not a terminal. `flood_burst=0` writes every line (no flood guard)."""
    if json is None:
        json = not sys.stderr.isatty() or "JOURNAL_STREAM" in os.environ
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    guard: list[structlog.typing.Processor] = [FloodGuard(flood_burst, flood_window_s)] if flood_burst else []
    shared: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        *guard,  # before the time stamp and rendering, so that a line left out costs little
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        RedactingProcessor(secrets),
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    _route_stdlib(numeric, shared, renderer)


class RoutedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler `configure` installs (replaced, not stacked, when called again)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            super().emit(record)
        except structlog.DropEvent:
            # The flood guard left the record out (and counted it). DropEvent is a BaseException,
            # which `logging` does not catch: it would reach the library that logged.
            return


def _route_stdlib(
    level: int, shared: list[structlog.typing.Processor], renderer: structlog.typing.Processor
) -> None:
    """One handler on the root logger that renders library records as structlog events."""
    handler = RoutedHandler(_CurrentStderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, RoutedHandler) or type(old) is logging.StreamHandler:
            root.removeHandler(old)  # ours from an earlier call, or a basicConfig() default
    if level > logging.DEBUG:
        handler.addFilter(AsyncuaDeadConnectionFilter())
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.CRITICAL)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(
            logging.DEBUG if level <= logging.DEBUG else max(level, logging.WARNING)
        )
