"""The reference ingest reads the documented payload: what it accepts, what it keeps aside, partitions.

No database and no broker: the JSON contract of docs/payload.md against `water_edge.centre.payload`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import zstandard

from water_edge.centre.consumer import partition_of
from water_edge.centre.loadgen import payload
from water_edge.centre.payload import MAX_JSON_BYTES, PayloadError, parse

TOPIC = "water/north/gw-03/plc1"


def reading(
    tag: str, ts: int, value: Any, quality: str = "good", unit: str = "", **extra: Any
) -> dict[str, Any]:
    return {"tag": tag, "ts": ts, "value": value, "quality": quality, "unit": unit, "source": "plc1", **extra}


def doc(**changes: Any) -> dict[str, Any]:
    ts = 1764059400000000000
    base: dict[str, Any] = {
        "v": 2, "epoch": 5, "stream": "plc1", "seq": 7, "site": "north", "gateway": "gw-03",
        "sent_ns": ts + 10**9,
        "readings": [
            reading("p", ts, 4.52, unit="bar"),
            reading("i", ts, None, "bad", "A", reason="timeout"),
            reading("n", ts + 1, 2**60 + 1),
            reading("s", ts + 2, "AUTO"),
            reading("b", ts + 3, True, "uncertain", reason="clock_step"),
        ],
    }  # fmt: skip
    base.update(changes)
    return base


def test_a_data_message_becomes_rows_with_exact_values() -> None:
    msg = parse(TOPIC, orjson.dumps(doc()))
    assert (msg.key, msg.seq, msg.items) == (("north", "gw-03", "plc1", 5), 7, 5)
    by_tag = {r[0]: r for r in msg.readings}
    assert by_tag["p"][2:5] == (4.52, None, "good")
    assert by_tag["i"][2:6] == (None, None, "bad", "timeout")
    assert by_tag["n"][3] == str(2**60 + 1), "integers beyond 2^53 keep their digits"
    assert by_tag["s"][2:4] == (None, "AUTO")
    assert by_tag["b"][2:4] == (1.0, "true")


def test_a_version_1_message_is_read_as_epoch_0() -> None:
    """Gateways not yet updated send version 1: no epoch, their outbox from before epochs."""
    v1 = {k: v for k, v in doc(v=1).items() if k != "epoch"}
    assert parse(TOPIC, orjson.dumps(v1)).key == ("north", "gw-03", "plc1", 0)


def test_a_nan_or_infinite_value_is_kept_as_text_not_lost_as_a_missing_value() -> None:
    ts = 1764059400000000000
    nonfinite = [reading(f"f{i}", ts, None, nonfinite=kind) for i, kind in enumerate(("nan", "inf", "-inf"))]
    missing = reading("missing", ts, None, "bad", reason="timeout")
    msg = parse(TOPIC, orjson.dumps(doc(readings=[*nonfinite, missing])))
    assert [r[2:5] for r in msg.readings] == [
        (None, "nan", "good"),
        (None, "inf", "good"),
        (None, "-inf", "good"),
        (None, None, "bad"),
    ]
    with pytest.raises(PayloadError, match="nonfinite 'NaN' is not nan/inf/-inf"):
        parse(TOPIC, orjson.dumps(doc(readings=[reading("f", ts, None, nonfinite="NaN")])))


def test_an_event_message_keeps_its_detail() -> None:
    events = [{"kind": "buffer_eviction", "source": "buffer", "ts": 5, "severity": "warning", "score": None,
               "detail": {"reason": "quota", "streams": {"plc1": [3, 9]}}}]  # fmt: skip
    body = {k: v for k, v in doc(stream="events").items() if k != "readings"} | {"events": events}
    msg = parse("water/north/gw-03/events", orjson.dumps(body))
    assert msg.readings == []
    ((idx, kind, _src, ts, severity, score, detail),) = msg.events
    assert (idx, kind, ts, severity, score) == (0, "buffer_eviction", 5, "warning", None)
    assert orjson.loads(detail)["streams"] == {"plc1": [3, 9]}


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (orjson.dumps(doc(v=3)), "unknown payload version 3"),
        (orjson.dumps(doc(v=True)), "unknown payload version True"),
        (
            orjson.dumps({k: v for k, v in doc().items() if k != "epoch"}),
            "epoch must be a non-negative integer",
        ),
        (orjson.dumps(doc(epoch=-1)), "epoch must be a non-negative integer"),
        (orjson.dumps(doc(epoch="5")), "epoch must be a non-negative integer"),
        (orjson.dumps(doc(epoch=2**53)), "epoch must be at most 2"),
        (orjson.dumps(doc(seq=0)), "seq must be >= 1"),
        (orjson.dumps(doc(seq="7")), "seq must be a non-negative integer"),
        (orjson.dumps(doc(gateway="gw-04")), "does not end in 'north/gw-04/plc1'"),
        (orjson.dumps(doc(events=[])), "exactly one of readings and events"),
        (orjson.dumps(doc(readings=[{"tag": "p"}])), r"readings\[0\] has no 'quality'"),
        (
            orjson.dumps(
                doc(
                    readings=[
                        doc()["readings"][0],
                        {k: v for k, v in doc()["readings"][0].items() if k != "source"},
                    ]
                )
            ),
            r"^readings\[1\] has no 'source'$",
        ),
        (orjson.dumps(doc(readings=["p"])), r"readings\[0\] must be an object \(got str\)"),
        (orjson.dumps(doc(readings={"tag": "p"})), r"readings must be a list \(got dict\)"),
        (
            orjson.dumps(doc(readings=[{**doc()["readings"][0], "quality": ["good"]}])),
            r"quality \['good'\] is not",
        ),
        (orjson.dumps(doc(readings=[{**doc()["readings"][0], "quality": "ok"}])), "quality 'ok'"),
        (orjson.dumps(doc(readings=[{**doc()["readings"][0], "value": [1]}])), "value must be"),
        (orjson.dumps(doc(readings=[{**doc()["readings"][0], "repeat": False}])), "repeat must be true"),
        (orjson.dumps(doc(readings=[{**doc()["readings"][0], "tag": {"a": 1}}])), "tag must be a string"),
        (orjson.dumps(doc(readings=[{**doc()["readings"][0], "unit": None}])), "unit must be a string"),
        (
            orjson.dumps(doc(readings=[{**doc()["readings"][0], "ts": -1}])),
            "ts must be a non-negative integer",
        ),
        (
            orjson.dumps(doc(readings=[{**doc()["readings"][0], "ts": 1.5}])),
            "ts must be a non-negative integer",
        ),
        (orjson.dumps(doc(site="s\u0000")), r"does not end in 's\\x00/gw-03/plc1'"),
        # What the database refuses, and refused the whole batch for: read here since 2026-12-07.
        (orjson.dumps(doc(seq=2**63)), r"seq must be at most 2\^63 - 1"),
        (orjson.dumps(doc(sent_ns=2**64 - 1)), r"sent_ns must be at most 2\^63 - 1"),
        (
            orjson.dumps(doc(readings=[{**doc()["readings"][0], "ts": 2**63}])),
            r"ts must be at most 2\^63 - 1",
        ),
        (
            orjson.dumps(doc(readings=[{**doc()["readings"][0], "tag": "t" * 513}])),
            "tag must be at most 512 characters",
        ),
        (
            orjson.dumps(doc(readings=[{**doc()["readings"][0], "unit": "m\u0000"}])),
            r"^readings\[0\]\.unit holds a NUL character",
        ),
        (b"1e999", "not JSON: number is infinity"),
        (b'{"v": NaN}', "not JSON"),
        (b'{"v": 2, "site": "\\ud800"}', "not JSON: no low surrogate"),
    ],
)
def test_anything_else_is_refused_with_the_reason(body: bytes, complaint: str) -> None:
    with pytest.raises(PayloadError, match=complaint):
        parse(TOPIC, body)


@pytest.mark.parametrize(
    ("event", "complaint"),
    [
        ({"kind": 5}, "kind must be a string"),
        ({"source": None}, "source must be a string"),
        ({"ts": "12"}, "ts must be a non-negative integer"),
        ({"ts": -1}, "ts must be a non-negative integer"),
        ({"severity": "apocalypse"}, "severity 'apocalypse' is not info/warning/alarm/critical"),
        ({"score": "nan"}, "score must be a number or null"),
        ({"score": True}, "score must be a number or null"),
        ({"detail": [1]}, "detail must be an object"),
        ({"kind": "k" * 513}, "kind must be at most 512 characters"),
        ({"detail": {"note": "a\u0000"}}, r"^events\[0\]\.detail\.note holds a NUL character"),
    ],
)
def test_an_event_field_of_the_wrong_type_is_refused_with_the_reason(
    event: dict[str, Any], complaint: str
) -> None:
    base = {"kind": "leak", "source": "h1", "ts": 5, "severity": "alarm", "score": 0.9, "detail": {}}
    body = {k: v for k, v in doc(stream="events").items() if k != "readings"} | {"events": [base | event]}
    with pytest.raises(PayloadError, match=complaint):
        parse("water/north/gw-03/events", orjson.dumps(body))


def test_the_load_generator_speaks_the_same_contract() -> None:
    msg = parse("water/site000/gw00001/plc1", payload("site000", "gw00001", 3, 10**18, 100, epoch=9))
    assert (msg.epoch, msg.seq, len(msg.readings)) == (9, 3, 100)


def test_partitions_are_stable_and_spread_a_fleet() -> None:
    names = [(f"site{i // 50:03d}", f"gw{i:05d}") for i in range(1000)]
    parts = [partition_of(site, gw, "plc1", 4) for site, gw in names]
    assert parts == [partition_of(site, gw, "plc1", 4) for site, gw in names]
    assert all(200 <= parts.count(p) <= 300 for p in range(4))


@pytest.mark.parametrize(
    ("content_type", "pack"),
    [
        ("application/json; compression=deflate", zlib.compress),
        ("application/json; compression=zstd", zstandard.ZstdCompressor().compress),
        (None, zlib.compress),  # an MQTT 3.1.1 subscription: no content type, the bytes say it
        (None, zstandard.ZstdCompressor().compress),
    ],
)
def test_a_compressed_message_is_read_as_the_json_it_carries(
    content_type: str | None, pack: Callable[[bytes], bytes]
) -> None:
    plain = orjson.dumps(doc())
    msg = parse(TOPIC, pack(plain), content_type)
    assert msg == parse(TOPIC, plain)


@pytest.mark.parametrize(
    ("content_type", "body", "complaint"),
    [
        ("application/json; compression=lz4", b"\x04\x22\x4d\x18", "unknown compression 'lz4'"),
        ("application/json; compression=deflate", b"{not deflate", "deflate payload does not decompress"),
        ("application/json; compression=zstd", zlib.compress(b"{}"), "zstd payload does not decompress"),
        ("application/json; compression=deflate", zlib.compress(orjson.dumps(doc()))[:-9], "cut short"),
    ],
)
def test_a_compressed_message_that_cannot_be_read_is_refused_with_the_reason(
    content_type: str, body: bytes, complaint: str
) -> None:
    with pytest.raises(PayloadError, match=complaint):
        parse(TOPIC, body, content_type)


@pytest.mark.parametrize("pack", [zlib.compress, zstandard.ZstdCompressor().compress])
def test_a_compressed_message_that_unpacks_beyond_the_limit_is_refused_without_unpacking_it_all(
    pack: Callable[[bytes], bytes],
) -> None:
    bomb = pack(b" " * (MAX_JSON_BYTES + 1))
    with pytest.raises(PayloadError, match=f"more than {MAX_JSON_BYTES} bytes"):
        parse(TOPIC, bomb)


def test_alerts_past_the_burst_are_counted_and_said_once_the_window_ends() -> None:
    from structlog.testing import capture_logs

    from water_edge.centre.burst_log import BurstLog

    now = [0.0]
    alerts = BurstLog(burst=3, window_s=60.0, clock=lambda: now[0])
    with capture_logs() as logs:
        for i in range(10):
            alerts.warning("ingest.rejected", topic=f"water/s1/gw{i}/plc1", reason="not JSON")
        alerts.roll()  # inside the window: nothing more to say
        now[0] = 61.0
        alerts.roll()
        alerts.warning("ingest.rejected", topic="water/s1/gw1/plc1", reason="not JSON")
    assert [e["event"] for e in logs] == ["ingest.rejected"] * 3 + [
        "ingest.rejected_suppressed",
        "ingest.rejected",
    ]
    summary = logs[3]
    assert summary["count"] == 7
    assert summary["first_topic"] == "water/s1/gw3/plc1"
    assert summary["note"] == "every rejected message is in the rejected table"


def test_a_flood_of_one_kind_of_alert_does_not_silence_another() -> None:
    """A cloned gateway's conflicts (one per message) must not hide the gap a third gateway has."""
    from structlog.testing import capture_logs

    from water_edge.centre.burst_log import BurstLog

    now = [0.0]
    alerts = BurstLog(burst=3, window_s=60.0, clock=lambda: now[0])
    with capture_logs() as logs:
        for seq in range(100):
            alerts.warning("ingest.conflict", gateway="gw1", seq=seq)
        alerts.warning("ingest.gap", gateway="gw3", first_seq=5, last_seq=9)
        now[0] = 60.0
        alerts.roll()
    events = [e["event"] for e in logs]
    assert events == ["ingest.conflict"] * 3 + ["ingest.gap", "ingest.conflict_suppressed"]
    assert (logs[3]["gateway"], logs[3]["first_seq"]) == ("gw3", 5)
    assert (logs[4]["count"], logs[4]["first_seq"]) == (97, 3)


@pytest.mark.parametrize("stream", ["cmd", "status"])
def test_a_message_on_a_reserved_stream_is_refused_even_when_it_is_a_valid_data_message(stream: str) -> None:
    """`water/<site>/<gw>/cmd` carries commands to the gateway: a service allowed to publish commands
    put a data message there, and the ingest stored it as stream `cmd` of that gateway."""
    body = orjson.dumps(doc(stream=stream))
    with pytest.raises(PayloadError, match=rf"stream '{stream}' is reserved"):
        parse(f"water/north/gw-03/{stream}", body)
