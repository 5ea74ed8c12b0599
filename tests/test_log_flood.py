"""The log flood guard through the pipeline `core.logs.configure` sets up, rendered to JSON on the
captured stderr: a burst of one kind of line is written up to its budget and the rest counted, every
other line still written, and the count reported on the kind's next line or as `log.suppressed`."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.support.testing import wait_until, write_agent_config
from water_edge.agent.config import load_config
from water_edge.core import logs
from water_edge.core.errors import ConfigError
from water_edge.core.log_flood import DEFAULT_BURST, DEFAULT_WINDOW_S, MAX_KINDS, SUMMARY_EVENT, FloodGuard

BURST = DEFAULT_BURST


class Log:
    """The JSON lines written to the captured stderr so far."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self._lines: list[dict[str, Any]] = []

    def lines(self) -> list[dict[str, Any]]:
        self._lines += [json.loads(line) for line in self._capsys.readouterr().err.splitlines() if line]
        return self._lines

    def described(self) -> str:
        """The lines so far as text, for a `wait_until` that times out."""
        return str(self.lines())

    def of(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["event"] == event]

    def summaries(self, of_event: str) -> list[dict[str, Any]]:
        return [line for line in self.of(SUMMARY_EVENT) if line["of_event"] == of_event]


@pytest.fixture
def log(capsys: pytest.CaptureFixture[str]) -> Log:
    return Log(capsys)


def with_time_left(window_s: float, needed_s: float) -> None:
    """Wait, if need be, for a window with `needed_s` left: windows are aligned to the monotonic
    clock, and a burst across the end of one would be two bursts."""
    left = window_s - time.monotonic() % window_s
    if left < needed_s:
        time.sleep(left + 0.01)


def into_the_next_window(window_s: float) -> None:
    time.sleep(window_s - time.monotonic() % window_s + 0.01)


def the_guard() -> FloodGuard:
    (guard,) = [p for p in structlog.get_config()["processors"] if isinstance(p, FloodGuard)]
    return guard


def test_a_burst_of_identical_warnings_gives_the_budget_then_the_count_on_the_next_one(log: Log) -> None:
    window_s = 2.0  # its next line comes well before the guard's timer (a quarter window late)
    logs.configure("info", json=True, flood_window_s=window_s)
    warn = structlog.get_logger("test").warning
    with_time_left(window_s, needed_s=1.0)
    for i in range(1000):
        warn("wmbus.telegram_refused", meter="m1", i=i)
    written = log.of("wmbus.telegram_refused")
    assert [line["i"] for line in written] == list(range(BURST))  # the first ones, in full
    assert not any("suppressed" in line for line in written)
    into_the_next_window(window_s)
    warn("wmbus.telegram_refused", meter="m1", i=1000)
    (next_one,) = log.of("wmbus.telegram_refused")[BURST:]
    assert (next_one["i"], next_one["suppressed"], next_one["suppressed_window_s"]) == (1000, 980, window_s)
    assert not log.of(SUMMARY_EVENT)  # reported once, on the line itself


def test_other_events_interleaved_with_a_flood_are_all_written(log: Log) -> None:
    logs.configure("info", json=True)
    warn = structlog.get_logger("test").warning
    with_time_left(DEFAULT_WINDOW_S, needed_s=5)
    for i in range(1000):
        warn("uplink.rejected", i=i)
        if i % 20 == 0:
            warn(f"driver.down.{i}", device=f"d{i}")  # 50 kinds, one line each
        if i % 100 == 0:
            structlog.get_logger("test").info("buffer.flushed", i=i)  # 10 of one kind
    lines = log.lines()
    assert len([line for line in lines if line["event"].startswith("driver.down.")]) == 50
    assert [line["i"] for line in lines if line["event"] == "buffer.flushed"] == list(range(0, 1000, 100))
    assert len([line for line in lines if line["event"] == "uplink.rejected"]) == BURST


def test_a_flood_that_stops_is_summarised_when_its_window_ends(log: Log) -> None:
    window_s = 0.5
    logs.configure("info", json=True, flood_window_s=window_s)
    with_time_left(window_s, needed_s=0.3)
    for _ in range(100):
        structlog.get_logger("test").error("modbus.bad_answer", device="plc")
    # Nothing else is logged: the guard's own timer reports the count.
    (summary,) = wait_until(lambda: log.summaries("modbus.bad_answer"), within_s=3, what=log.described)
    assert (summary["suppressed"], summary["window_s"], summary["level"]) == (100 - BURST, window_s, "error")
    assert "of_logger" not in summary
    assert len(log.of("modbus.bad_answer")) == BURST  # errors are limited too, never the first ones


def test_debug_lines_are_never_limited(log: Log) -> None:
    logs.configure("debug", json=True)
    for i in range(500):
        structlog.get_logger("test").debug("modbus.request", i=i)
    assert len(log.of("modbus.request")) == 500
    assert the_guard().tracked_kinds == 0


def test_the_kinds_tracked_stay_bounded_and_the_rest_share_one_budget(log: Log) -> None:
    window_s = 1.0
    logs.configure("info", json=True, flood_window_s=window_s)
    with_time_left(window_s, needed_s=0.6)
    for i in range(MAX_KINDS + 1000):
        structlog.get_logger("test").warning(f"centre.bad_message.{i}")
    assert the_guard().tracked_kinds == MAX_KINDS + 1  # and the shared "(other kinds)"
    assert len(log.lines()) == MAX_KINDS + BURST
    (summary,) = wait_until(lambda: log.summaries("(other kinds)"), within_s=3, what=log.described)
    assert summary["suppressed"] == 1000 - BURST
    assert the_guard().tracked_kinds == 0  # a new window starts empty


def test_a_library_logging_through_the_standard_library_is_limited_by_its_message_template(
    log: Log,
) -> None:
    window_s = 0.5
    logs.configure("info", json=True, flood_window_s=window_s)
    library = logging.getLogger("asyncua.client.ua_client")
    with_time_left(window_s, needed_s=0.3)
    for i in range(100):
        library.warning("Revised values %s differ", i)  # the guard's DropEvent never reaches here
    written = [line for line in log.lines() if line.get("logger") == "asyncua.client.ua_client"]
    assert [line["event"] for line in written] == [f"Revised values {i} differ" for i in range(BURST)]
    (summary,) = wait_until(lambda: log.summaries("Revised values %s differ"), within_s=3, what=log.described)
    assert (summary["of_logger"], summary["suppressed"]) == ("asyncua.client.ua_client", 100 - BURST)


def test_threads_logging_at_once_lose_no_count(log: Log) -> None:
    window_s = 1.0
    logs.configure("info", json=True, flood_window_s=window_s)
    with_time_left(window_s, needed_s=0.8)

    def flood() -> None:
        for _ in range(250):
            structlog.get_logger("test").warning("audio.overrun")

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(log.of("audio.overrun")) == BURST
    (summary,) = wait_until(lambda: log.summaries("audio.overrun"), within_s=3, what=log.described)
    assert summary["suppressed"] == 8 * 250 - BURST


def test_a_burst_of_zero_switches_the_guard_off(log: Log) -> None:
    logs.configure("info", json=True, flood_burst=0)
    for _ in range(300):
        structlog.get_logger("test").warning("uplink.rejected")
    assert len(log.of("uplink.rejected")) == 300


def test_the_config_file_sets_the_budget_and_names_the_key_it_refuses(tmp_path: Path) -> None:
    config = load_config(write_agent_config(tmp_path, extra="[log]\nflood_burst = 5\nflood_window_s = 10"))
    assert (config.log.flood_burst, config.log.flood_window_s) == (5, 10.0)
    assert load_config(write_agent_config(tmp_path)).log.flood_burst == DEFAULT_BURST == 20
    for text, problem in [
        ("flood_burst = -1", "log.flood_burst: Input should be greater than or equal to 0 (got -1)"),
        ('flood_window_s = "1m"', "log.flood_window_s: expected a number (got '1m')"),
        (
            "flood_window_s = 0.01",
            "log.flood_window_s: Input should be greater than or equal to 1 (got 0.01)",
        ),
    ]:
        path = write_agent_config(tmp_path, extra=f"[log]\n{text}")
        with pytest.raises(ConfigError) as refused:
            load_config(path)
        assert refused.value.problems == [f"{path}: {problem}"]
