"""The shared test helpers themselves (tests/support/testing.py): waits return what they waited for
and fail naming it; the config builder's output is a valid agent config with what was asked."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import pytest

from tests.support.testing import agent_config, eventually, wait_until, write_agent_config
from water_edge.agent.config import load_config
from water_edge.drivers.fake import FakeConfig


async def test_eventually_returns_the_first_truthy_value_of_a_sync_or_async_condition() -> None:
    counter = itertools.count()
    assert await eventually(lambda: next(counter) >= 3 and "three") == "three"

    async def read() -> int | None:
        n = next(counter)
        return n if n >= 6 else None

    assert await eventually(read) == 6


async def test_eventually_and_wait_until_name_what_never_came() -> None:
    with pytest.raises(TimeoutError, match=r"not met within 0\.05 s: the pump stopping"):
        await eventually(lambda: False, 0.05, what="the pump stopping")
    with pytest.raises(TimeoutError, match="last seen: 7"):
        wait_until(lambda: None, 0.05, what=lambda: "last seen: 7")


def test_wait_until_returns_the_value() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 2 and [1], every_s=0) == [1]


def test_the_builders_config_loads_with_sections_as_dicts_or_fragments(tmp_path: Path) -> None:
    device = {
        "name": "plc",
        "kind": "fake",
        "poll_interval_ms": 250,
        "tags": [{"name": "flow", "unit": "m3/h"}],
    }
    fragment = '[[devices]]\nname = "plc"\nkind = "fake"\npoll_interval_ms = 250\n'
    fragment += '[[devices.tags]]\nname = "flow"\nunit = "m3/h"\n'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    from_dicts = load_config(
        write_agent_config(
            tmp_path / "a",
            broker_port=18830,
            uplink={"max_inflight": 7},
            buffer={"max_bytes": "8MiB"},
            devices=[device],
            models={"pump": [{"name": "p1", "signals": {"flow": "flow"}}]},
            extra='[log]\nlevel = "warning"',
        )
    )
    from_text = load_config(write_agent_config(tmp_path / "b", broker_port=18830, devices=fragment))
    assert (from_dicts.uplink.port, from_dicts.uplink.max_inflight) == (18830, 7)
    assert from_dicts.buffer.max_bytes == 8 * 2**20
    assert from_dicts.gateway.state_dir == tmp_path / "a" / "state"
    assert from_dicts.status_socket == tmp_path / "a" / "state" / "status.sock"
    assert [p.name for p in from_dicts.models["pump"]] == ["p1"]
    assert from_dicts.log.level == "warning"
    (a,), (b,) = from_dicts.devices, from_text.devices
    assert isinstance(a, FakeConfig)
    assert a.model_dump() == b.model_dump()
    assert a.poll_interval_ms == 250


def test_a_broken_fragment_fails_in_the_builder() -> None:
    with pytest.raises(tomllib.TOMLDecodeError):
        agent_config(Path("/tmp/state"), devices="[[devices]\nname = ")
