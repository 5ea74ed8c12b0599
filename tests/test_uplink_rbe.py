"""Report by exception: deadbands, heartbeats that keep the real acquisition time, compression of JSON."""

from __future__ import annotations

import json
import math
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import paho.mqtt.client as paho
import pytest
import zstandard
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from tests.support.broker import Mosquitto
from tests.support.testing import eventually
from tests.support.uplink import StartUplink, mqtt_config
from water_edge.agent.uplink.compression import decompress
from water_edge.agent.uplink.config import MqttConfig, RbeConfig, RbeRule
from water_edge.agent.uplink.json_encoding import JsonEncoder
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.agent.uplink.rbe import ExceptionFilter, ReportByException
from water_edge.agent.uplink.topics import Topics
from water_edge.buffer.codec import decode_readings, encode_readings
from water_edge.buffer.types import Batch, OutboxRow
from water_edge.core.errors import BufferError
from water_edge.core.reading import Event, Reading

S = 1_000_000_000
T0 = 1_750_000_000 * S
SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "payload.schema.json").read_text())


def r(tag: str, t_s: float, value: object, quality: str = "good", reason: str | None = None) -> Reading:
    return Reading("plc1", tag, T0 + int(t_s * S), value, quality, "bar", reason)  # type: ignore[arg-type]


def run(flt: ExceptionFilter, readings: Sequence[Reading]) -> list[Reading]:
    """Each reading as its own append that commits: what the outbox would get."""
    out: list[Reading] = []
    for reading in readings:
        decision = flt.decide([Batch("plc1", readings=[reading])])
        flt.commit(decision)
        out += [x for b in decision.batches for x in b.readings or ()]
    return out


def test_absolute_deadband_is_measured_from_the_last_reported_value() -> None:
    flt = ExceptionFilter(RbeConfig(deadband=0.5, send_previous=False))
    sent = run(flt, [r("p", 0, 10.0), r("p", 1, 10.4), r("p", 2, 10.3), r("p", 3, 10.51), r("p", 4, 10.9)])
    # 10.4 and 10.3 stay within 0.5 of 10.0; 10.51 leaves it; 10.9 is within 0.5 of 10.51.
    assert [x.value for x in sent] == [10.0, 10.51]
    assert flt.stats().suppressed == 3


def test_percent_deadband_has_the_absolute_one_as_floor() -> None:
    flt = ExceptionFilter(RbeConfig(deadband=0.2, deadband_pct=1.0, send_previous=False))
    sent = run(
        flt,
        [
            r("p", 0, 1000.0),
            r("p", 1, 1009.0),
            r("p", 2, 1011.0),
            r("q", 0, 0.0),
            r("q", 1, 0.15),
            r("q", 2, 0.3),
        ],
    )
    assert [(x.tag, x.value) for x in sent] == [("p", 1000.0), ("p", 1011.0), ("q", 0.0), ("q", 0.3)]


def test_a_change_is_preceded_by_the_value_held_until_it_so_a_trend_draws_what_happened() -> None:
    """A ramp, a flat stretch inside the band, then a step down: without the last held value a
    trend joins 13.41 straight to 10.0 and shows ~11.7 where the device held 14.01."""
    flt = ExceptionFilter(RbeConfig(deadband=1.0))
    ramp = [r("p", t, round(11.01 + 0.3 * t, 2)) for t in range(11)]  # 11.01 .. 14.01
    flat = [r("p", t, 14.01) for t in range(11, 26)]
    sent = run(flt, [*ramp, *flat, r("p", 26, 10.0)])
    assert [(int((x.ts_ns - T0) / S), x.value) for x in sent] == [
        (0, 11.01), (3, 11.91), (4, 12.21), (7, 13.11), (8, 13.41), (25, 14.01), (26, 10.0),
    ]  # fmt: skip
    stats = flt.stats()
    assert (stats.seen, stats.reported, stats.suppressed) == (27, 7, 20)


def test_nothing_is_sent_ahead_of_a_change_when_what_was_held_back_equals_what_was_reported() -> None:
    """Deadband 0 (Sparkplug's default): a step is one reading, not two."""
    flt = ExceptionFilter(RbeConfig())
    sent = run(
        flt, [r("p", 0, 5.0), r("p", 1, 5.0), r("p", 2, 5.0), r("p", 3, 6.0), r("p", 4, None, "bad", "x")]
    )
    assert [x.value for x in sent] == [5.0, 6.0, None]
    off = ExceptionFilter(RbeConfig(deadband=1.0, send_previous=False))
    assert [x.value for x in run(off, [r("p", 0, 5.0), r("p", 1, 5.5), r("p", 2, 7.0)])] == [5.0, 7.0]


def test_a_value_held_back_and_then_returned_to_the_reported_one_is_not_sent_ahead_of_a_change() -> None:
    """5.5 was held at t=1, but at t=2 the device was back at the reported 5.0: the trend before
    the step to 7.0 is 5.0 all along, and a 5.5 sent ahead of it would draw a bump that was over."""
    flt = ExceptionFilter(RbeConfig(deadband=1.0))
    sent = run(flt, [r("p", 0, 5.0), r("p", 1, 5.5), r("p", 2, 5.0), r("p", 3, 5.0), r("p", 4, 7.0)])
    assert [(int((x.ts_ns - T0) / S), x.value) for x in sent] == [(0, 5.0), (4, 7.0)]
    batched = ExceptionFilter(RbeConfig(deadband=1.0))  # the same within one append
    decision = batched.decide([Batch("plc1", readings=[r("p", 0, 5.0)])])
    batched.commit(decision)
    decision = batched.decide([Batch("plc1", readings=[r("p", 1, 5.5), r("p", 2, 5.0), r("p", 4, 7.0)])])
    assert [x.value for b in decision.batches for x in b.readings or ()] == [7.0]


def test_64_bit_integers_are_compared_exactly() -> None:
    """Above 2^53 neighbouring integers are one float: each count of a 64-bit counter is a change."""
    flt = ExceptionFilter(RbeConfig())
    counts = [2**53 + i for i in range(6)]
    sent = run(flt, [r("c", t, v) for t, v in enumerate(counts)])
    assert [x.value for x in sent] == counts
    stamps = [1796473000000000000 + 100 * i for i in range(6)]
    assert [x.value for x in run(flt, [r("ns", t, v) for t, v in enumerate(stamps)])] == stamps


def test_integer_counters_have_the_same_deadbands_and_an_infinity_is_a_change_only_to_another_value() -> None:
    flt = ExceptionFilter(RbeConfig(deadband=2.0, deadband_pct=1.0, send_previous=False))
    sent = run(
        flt,
        [
            r("c", 0, 10), r("c", 1, 12), r("c", 2, 13),  # absolute: 2 is within, 3 leaves it
            r("k", 0, 1000), r("k", 1, 1010), r("k", 2, 990), r("k", 3, 1011),  # 1 % of 1000
            r("f", 0, 5.0), r("f", 1, math.inf), r("f", 2, math.inf), r("f", 3, -math.inf), r("f", 4, 5.0),
        ],
    )  # fmt: skip
    assert [(x.tag, x.value) for x in sent] == [
        ("c", 10),
        ("c", 13),
        ("k", 1000),
        ("k", 1011),
        ("f", 5.0),
        ("f", math.inf),
        ("f", -math.inf),
        ("f", 5.0),
    ]


def test_quality_and_reason_changes_are_always_reported_and_non_numbers_on_any_change() -> None:
    flt = ExceptionFilter(RbeConfig(deadband=100.0))
    sent = run(
        flt,
        [
            r("p", 0, 1.0),
            r("p", 1, None, "bad", "timeout"),
            r("p", 2, None, "bad", "timeout"),
            r("p", 3, None, "bad", "modbus exception 2"),
            r("p", 4, 1.0),
            r("b", 0, True), r("b", 1, True), r("b", 2, False),
            r("s", 0, "auto"), r("s", 1, "auto"), r("s", 2, "manual"),
            r("n", 0, math.nan), r("n", 1, math.nan), r("n", 2, 1.0),
            r("u", 0, 5.0), r("u", 1, 5.0, "uncertain"), r("u", 2, 5.0, "uncertain", "clock step"),
            r("u", 3, 5.0),  # the same value each time
            r("i", 0, 7), Reading("plc1", "i", T0 + S, 7, unit="kPa"),
        ],
    )  # fmt: skip
    assert [(x.tag, x.value if x.value == x.value else "nan", x.reason) for x in sent] == [
        ("p", 1.0, None),
        ("p", None, "timeout"),
        ("p", None, "modbus exception 2"),
        ("p", 1.0, None),
        ("b", True, None),
        ("b", False, None),
        ("s", "auto", None),
        ("s", "manual", None),
        ("n", "nan", None),
        ("n", 1.0, None),
        ("u", 5.0, None),
        ("u", 5.0, None),
        ("u", 5.0, "clock step"),
        ("u", 5.0, None),
        ("i", 7, None),
        ("i", 7, None),
    ]
    assert [x.quality for x in sent if x.tag == "u"] == ["good", "uncertain", "uncertain", "good"]
    assert [x.unit for x in sent if x.tag == "i"] == ["bar", "kPa"]


def test_heartbeat_repeats_the_last_change_with_its_own_timestamp() -> None:
    flt = ExceptionFilter(RbeConfig(max_interval_s=60))
    readings = [r("p", t, 5.0 if t < 150 else 6.0) for t in range(200)]
    sent = run(flt, readings)
    assert [(int((x.ts_ns - T0) / S), x.value, x.repeat) for x in sent] == [
        (0, 5.0, False),
        (0, 5.0, True),  # sent at t=60, stamped with the acquisition that set 5.0
        (0, 5.0, True),  # t=120
        (150, 6.0, False),
    ]
    assert flt.stats().repeats == 2


def test_first_matching_rule_wins_and_unset_keys_come_from_the_defaults() -> None:
    cfg = RbeConfig(
        deadband=1.0,
        max_interval_s=30,
        tags=(RbeRule(match="plc1/pump*", deadband=0.0), RbeRule(match="plc1/*", deadband=50.0)),
    )
    flt = ExceptionFilter(cfg)
    assert (flt.band("plc1", "pump1.flow").deadband, flt.band("plc1", "pump1.flow").max_interval_ns) == (
        0.0,
        30 * S,
    )
    assert flt.band("plc1", "level").deadband == 50.0
    assert flt.band("plc2", "level").deadband == 1.0


class FailingOnce:
    def __init__(self) -> None:
        self.fail = True
        self.got: list[Batch] = []

    async def append(self, batches: Sequence[Batch]) -> list[int]:
        if self.fail:
            self.fail = False
            raise BufferError("disk full")
        self.got += batches
        return list(range(len(batches)))


async def test_a_failed_append_leaves_the_filter_as_it_was_so_the_retry_loses_nothing() -> None:
    box = FailingOnce()
    wrapper = ReportByException(box, ExceptionFilter(RbeConfig()))
    batch = [Batch("plc1", readings=[r("p", 0, 1.0), r("p", 1, 1.0), r("p", 2, 2.0)])]
    with pytest.raises(BufferError):
        await wrapper.append(batch)
    assert await wrapper.append(batch) == [0]
    assert [x.value for x in box.got[0].readings or ()] == [1.0, 2.0]
    # Events and batches with nothing to report: events pass, empty batches are not appended.
    assert await wrapper.append([Batch("plc1", readings=[r("p", 3, 2.0)])]) == []


async def test_through_the_outbox_wrapper_events_pass_and_a_held_value_precedes_the_change() -> None:
    """Most appends report nothing; what they hold back must still precede the next change."""
    box = FailingOnce()
    box.fail = False
    wrapper = ReportByException(box, ExceptionFilter(RbeConfig(deadband=1.0)))
    assert await wrapper.append([Batch("plc1", readings=[r("p", 0, 1.0)])]) == [0]
    assert await wrapper.append([Batch("plc1", readings=[r("p", 1, 1.4)])]) == []  # held back
    alarm = Batch("events", events=[Event("leak", "hyd1", T0, "alarm")])
    assert await wrapper.append([alarm, Batch("plc1", readings=[r("p", 2, 3.0)])]) == [0, 1]
    assert box.got[1] == alarm
    assert [(x.ts_ns - T0) // S for x in box.got[2].readings or ()] == [1, 2]
    assert [x.value for x in box.got[2].readings or ()] == [1.4, 3.0]
    assert wrapper.filter.stats().suppressed == 0  # the held value went out after all


def test_the_repeat_flag_survives_the_outbox_and_reaches_the_json_payload() -> None:
    readings = [r("p", 0, 5.0), Reading("plc1", "p", T0, math.inf, repeat=True), r("q", 0, 1.0)]
    body = encode_readings(readings)
    back = decode_readings(body)
    assert [x.repeat for x in back] == [False, True, False]
    assert back[1].value == math.inf
    # Without the flag the stored body is byte-identical to what it was before the flag existed.
    assert encode_readings([r("q", 0, 1.0)]) == b'[["plc1","q",1750000000000000000,1.0,"good","bar",null]]'
    doc = orjson.loads(
        JsonEncoder(Topics("water", "s", "g"))
        .encode(OutboxRow(1, "plc1", 1, "telemetry", 1, 3, body))
        .payload
    )
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    assert [x.get("repeat") for x in doc["readings"]] == [None, True, None]


@pytest.mark.parametrize("kind", ["deflate", "zstd"])
def test_compressed_json_is_announced_and_decodes_to_the_plain_payload(kind: str) -> None:
    body = encode_readings([r(f"pump{i}.flow", 0, 400.0 + i) for i in range(200)])
    row = OutboxRow(1, "plc1", 9, "telemetry", 1, 200, body)
    plain = JsonEncoder(Topics("water", "s", "g"))
    packed = JsonEncoder(Topics("water", "s", "g"), compression=kind)  # type: ignore[arg-type]
    assert (plain.content_type, plain.utf8) == ("application/json", True)
    assert (packed.content_type, packed.utf8) == (f"application/json; compression={kind}", False)
    msg = packed.encode(row)
    raw = (
        zlib.decompress(msg.payload)
        if kind == "deflate"
        else zstandard.ZstdDecompressor().decompress(msg.payload)
    )
    assert decompress(packed.content_type, msg.payload) == raw
    doc, ref = orjson.loads(raw), orjson.loads(plain.encode(row).payload)
    doc.pop("sent_ns"), ref.pop("sent_ns")
    assert doc == ref
    assert len(msg.payload) * 3 < len(plain.encode(row).payload)


@pytest.mark.parametrize(
    "bad",
    [
        {"compression": "zstd", "protocol": "3.1.1"},
        {"compression": "deflate", "encoding": "sparkplug_b"},
        {"compression": "lz4"},
        {"sparkplug": {"group_id": "g"}},
        {"rbe": {"deadband": -1}},
        {"rbe": {"tags": [{"match": "*", "dead_band": 1}]}},
    ],
)
def test_config_refuses(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MqttConfig(host="b", **bad)  # type: ignore[arg-type]


def test_sparkplug_reports_changes_only_by_default_and_json_everything() -> None:
    assert MqttConfig(host="b").effective_rbe() is None
    assert MqttConfig(host="b", encoding="sparkplug_b").effective_rbe() == RbeConfig()


async def test_a_compressed_payload_is_announced_in_the_mqtt5_content_type(
    mosquitto: Mosquitto, start_uplink: StartUplink
) -> None:
    got: list[tuple[str, int, bytes]] = []
    ready = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_connect = lambda c, *_a: c.subscribe("water/#", qos=1)
    client.on_subscribe = lambda *_a: ready.set()

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        if not msg.topic.endswith("/status"):
            props: Any = msg.properties  # paho sets the properties a packet has as attributes at run time
            got.append((props.ContentType, props.PayloadFormatIndicator, bytes(msg.payload)))

    client.on_message = on_message
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        assert ready.wait(5)
        box = MemoryOutbox()
        box.append_sync([Batch("plc1", readings=[r(f"tag{i}", 0, float(i)) for i in range(50)])])
        await start_uplink(mqtt_config(mosquitto, compression="zstd"), box)
        await eventually(lambda: box.pending() == 0 and got, what="the row acknowledged and received")
    finally:
        client.loop_stop()
        client.disconnect()
    content_type, indicator, payload = got[0]
    assert (content_type, indicator) == ("application/json; compression=zstd", 0)
    doc = orjson.loads(decompress(content_type, payload))
    assert [x["value"] for x in doc["readings"]] == [float(i) for i in range(50)]
