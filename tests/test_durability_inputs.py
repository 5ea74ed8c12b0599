"""Bad input everywhere, property-based: config files, outbox rows, command messages.

Arbitrary input must end in the one documented outcome (a `ConfigError`, an `EncodeError`, a
counted rejection), never another exception, and in bounded time.
"""

from __future__ import annotations

import asyncio
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from water_edge.agent.config import load_config
from water_edge.agent.uplink.commands import MAX_COMMAND_BYTES
from water_edge.agent.uplink.config import MqttConfig
from water_edge.agent.uplink.interfaces import EncodeError
from water_edge.agent.uplink.json_encoding import JsonEncoder
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.agent.uplink.mqtt import MqttUplink
from water_edge.agent.uplink.topics import Topics
from water_edge.buffer.types import OutboxRow
from water_edge.core.errors import ConfigError

# Literal text on purpose: the property test appends generated lines to it, so its exact shape
# (a minimal file ending inside `[uplink]`) is part of the test.
GOOD = """schema_version = 1
[gateway]
site = "s1"
id = "gw1"
state_dir = "/tmp/x"
[uplink]
host = "127.0.0.1"
"""
KEYS = [
    "schema_version",
    "site",
    "id",
    "host",
    "port",
    "max_bytes",
    "synchronous",
    "kind",
    "name",
    "poll_interval_ms",
    "tags",
    "address",
    "type",
    "prefix",
    "max_inflight",
    "flush_interval_ms",
    "state_dir",
    "level",
    "json",
    "enabled",
    "unit_id",
    "stream",
]
SECTIONS = [
    "[gateway]",
    "[uplink]",
    "[uplink.tls]",
    "[buffer]",
    "[status]",
    "[log]",
    "[[devices]]",
    "[[devices.tags]]",
    "[unknown]",
]
VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True).map(lambda f: repr(f).replace("inf", "inf").replace("nan", "nan")),
    st.text(max_size=30).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.sampled_from(["true", "false", "[]", "[1, 2]", '["a"]', "{}", "{a = 1}", "1979-05-27"]),
)
LINES = st.one_of(
    st.sampled_from(SECTIONS),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(KEYS), VALUES),
    st.text(alphabet=string.printable, max_size=40),
)


def problems_of(path: Path) -> list[str] | None:
    """None if the file loads, else the ConfigError's problems (any other exception escapes)."""
    try:
        load_config(path)
    except ConfigError as exc:
        return exc.problems
    return None


def check(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        problems = problems_of(path)
    if problems is not None:
        assert problems, "a ConfigError always says what is wrong"
        assert all(str(path) in p for p in problems), problems


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINES, max_size=25))
@example(["0=19000000000000000000"])  # an integer beyond 64 bits: tomllib reads it, orjson did not
def test_config_files_built_from_real_keys_load_or_give_config_error(lines: list[str]) -> None:
    check(GOOD + "\n".join(lines))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_as_a_config_file_gives_config_error(text: str) -> None:
    check(text)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_a_config_file_give_config_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_bytes(data)
        problems = problems_of(path)
    assert problems is None or problems


ENCODER = JsonEncoder(Topics("water", "s1", "gw1"))


@settings(max_examples=300, deadline=None)
@given(
    stream=st.text(max_size=20),
    row_class=st.sampled_from(["telemetry", "event"]),
    body=st.one_of(
        st.binary(max_size=200),
        st.sampled_from(
            [
                b"[]",
                b"[[1]]",
                b'[["a","b",1,2.0,"good","",null]]',
                b'[["k","s",1,"info",null,{}]]',
                b'[["a","b",1,"nan","good","",null,"f"]]',
                b"[[" * 50 + b"]]" * 50,
            ]
        ),
    ),
)
def test_any_outbox_row_encodes_or_raises_encode_error(stream: str, row_class: str, body: bytes) -> None:
    row = OutboxRow(1, stream, 1, row_class, 0, 1, body)  # type: ignore[arg-type]
    try:
        msg = ENCODER.encode(row)
    except EncodeError:
        return
    assert msg.topic == f"water/s1/gw1/{stream}"


@settings(max_examples=200, deadline=None)
@given(topic=st.text(max_size=60), payload=st.binary(max_size=300), oversize=st.booleans())
def test_any_command_message_is_queued_or_counted_never_raises(
    topic: str, payload: bytes, oversize: bool
) -> None:
    async def scenario() -> None:
        async def handler(_suffix: str, _payload: bytes) -> None:
            return None

        uplink = MqttUplink(MqttConfig(host="127.0.0.1"), MemoryOutbox(), "s1", "gw1", on_command=handler)
        body = payload + (b"x" * MAX_COMMAND_BYTES if oversize else b"")
        inbox = uplink.commands
        assert inbox is not None
        for t in (topic, f"water/s1/gw1/cmd/{topic}"):
            inbox.offer(t, body)
        stats = uplink.health().commands
        assert stats is not None
        assert stats.received == 2
        assert stats.rejected + inbox.queued == 2

    asyncio.run(scenario())
