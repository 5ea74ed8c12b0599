"""One Ctrl-C stops a command's asyncio work even when the work swallowed the first cancellation,
as Python 3.11's `asyncio.wait_for` does when an answer lands with it (CPython gh-86296): a scan
of 247 Modbus unit IDs then ran on for two minutes after Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.support.signals import ctrl_c_delivered
from water_edge.agent.commands._interrupt import run_until_interrupted


def _ctrl_c_soon() -> None:
    asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGINT)


def test_one_ctrl_c_stops_work_that_swallowed_the_first_cancellation() -> None:
    seen: list[str] = []

    async def scan() -> None:
        _ctrl_c_soon()
        try:
            await asyncio.sleep(5)  # waiting for unit 1's answer
        except asyncio.CancelledError:
            seen.append("swallowed")  # what wait_for does when the answer lands with the cancel
        await asyncio.sleep(5)  # unit 2: only another cancellation ends this before it is done
        seen.append("scanned on")

    with ctrl_c_delivered(), pytest.raises(KeyboardInterrupt):
        run_until_interrupted(scan())
    assert seen == ["swallowed"]


def test_work_that_ends_returns_its_result_and_ctrl_c_is_the_shells_again() -> None:
    async def scan() -> int:
        await asyncio.sleep(0)
        return 3

    with ctrl_c_delivered():
        assert run_until_interrupted(scan()) == 3
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_cancellation_that_is_not_ctrl_c_stays_a_cancellation() -> None:
    async def scan() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_soon(task.cancel)
        await asyncio.sleep(5)

    with pytest.raises(asyncio.CancelledError):
        run_until_interrupted(scan())


def test_a_command_started_with_ctrl_c_ignored_keeps_ignoring_it() -> None:
    """A scan started in the background (`nohup`, `&`) inherits SIGINT ignored: the shell's Ctrl-C
    is not for it, and it runs to its end."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:

        async def scan() -> str:
            _ctrl_c_soon()
            await asyncio.sleep(0.3)
            return "scanned"

        try:
            result = run_until_interrupted(scan())
        except KeyboardInterrupt:  # raised here, it would end the whole test session
            pytest.fail("interrupted by a Ctrl-C it was started to ignore")
        assert result == "scanned"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
