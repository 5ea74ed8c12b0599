"""Config validation, topic names and the JSON payload encoding (no broker needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import orjson
import pytest
from pydantic import ValidationError

from water_edge.agent.uplink.config import MqttConfig, TlsConfig
from water_edge.agent.uplink.interfaces import EncodeError
from water_edge.agent.uplink.json_encoding import JsonEncoder, encode
from water_edge.agent.uplink.topics import Topics
from water_edge.buffer.codec import encode_events, encode_readings
from water_edge.buffer.types import OutboxRow
from water_edge.core.errors import UplinkError
from water_edge.core.reading import Event, Reading

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "payload.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def row(body: bytes, stream: str = "plc1", cls: str = "telemetry", seq: int = 7) -> OutboxRow:
    return OutboxRow(3, stream, seq, cls, 1, 1, body)  # type: ignore[arg-type]


def test_config_defaults() -> None:
    cfg = MqttConfig(host="broker")
    assert (cfg.port, cfg.protocol, cfg.keepalive_s, cfg.prefix) == (1883, "5", 30, "water")
    assert (cfg.max_inflight, cfg.lease_rows) == (32, 64)
    assert cfg.effective_client_id("s", "g") == "edge-s-g"
    assert MqttConfig(host="b", client_id="me").effective_client_id("s", "g") == "me"


@pytest.mark.parametrize(
    "bad",
    [
        {"extra": 1},
        {"protocol": "3"},
        {"prefix": "wa+ter"},
        {"prefix": "water/"},
        {"prefix": "#"},
        {"max_inflight": 0},
        {"max_inflight": 1001},
        {"reconnect_min_s": 5, "reconnect_max_s": 1},
        {"port": 0},
        {"password": "x"},
    ],
)
def test_config_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MqttConfig(host="broker", **bad)  # type: ignore[arg-type]


def test_config_is_frozen_and_tls_needs_cert_and_key_together(tmp_path: Path) -> None:
    cfg = MqttConfig(host="b", prefix="utility/water")
    with pytest.raises(ValidationError):
        cfg.port = 1
    with pytest.raises(ValidationError):
        TlsConfig(ca_file=tmp_path / "ca.pem", cert_file=tmp_path / "c.pem")
    assert TlsConfig(ca_file=tmp_path / "ca.pem").verify_hostname


def test_topics() -> None:
    t = Topics("water", "site1", "gw1")
    assert t.stream("plc1") == "water/site1/gw1/plc1"
    assert t.status == "water/site1/gw1/status"
    for bad in ("a/b", "+", "#", "", "a b", "status"):
        with pytest.raises(UplinkError):
            t.stream(bad)
    with pytest.raises(UplinkError):
        Topics("water", "si+te", "gw1")


def test_reading_payload() -> None:
    body = encode_readings(
        [
            Reading("plc1", "p1", 10**18, 4.5, unit="bar"),
            Reading("plc1", "p2", 10**18 + 1, None, "bad", "", "timeout"),
            Reading("plc1", "run", 10**18 + 2, True),
            Reading("plc1", "mode", 10**18 + 3, "auto", "uncertain", "", "stale"),
            Reading("plc1", "flow", 10**18 + 4, math.nan, "uncertain", "m3/h", "sensor"),
            Reading("plc1", "n", 10**18 + 5, 2**53 + 1),
        ]
    )
    doc = orjson.loads(encode(row(body), "site1", "gw1", epoch=2**53 - 1))
    VALIDATOR.validate(doc)
    assert {k: doc[k] for k in ("v", "epoch", "stream", "seq", "site", "gateway")} == {
        "v": 2,
        "epoch": 2**53 - 1,
        "stream": "plc1",
        "seq": 7,
        "site": "site1",
        "gateway": "gw1",
    }
    assert isinstance(doc["sent_ns"], int)
    r = doc["readings"]
    assert r[0] == {
        "tag": "p1",
        "ts": 10**18,
        "value": 4.5,
        "quality": "good",
        "unit": "bar",
        "source": "plc1",
    }
    assert r[1]["reason"] == "timeout"
    assert r[1]["value"] is None
    assert r[2]["value"] is True
    assert r[4]["value"] is None
    assert r[4]["nonfinite"] == "nan"
    assert r[5]["value"] == 2**53 + 1  # integers stay exact


def test_event_payload() -> None:
    body = encode_events([Event("leak", "hyd1", 5, "alarm", 0.9, {"x_m": 12.5, "pair": ["a", "b"]})])
    msg = JsonEncoder(Topics("water", "s", "g")).encode(row(body, "events", "event"))
    assert msg.topic == "water/s/g/events"
    doc = orjson.loads(msg.payload)
    VALIDATOR.validate(doc)
    assert "readings" not in doc
    assert doc["events"] == [
        {
            "kind": "leak",
            "source": "hyd1",
            "ts": 5,
            "severity": "alarm",
            "score": 0.9,
            "detail": {"x_m": 12.5, "pair": ["a", "b"]},
        }
    ]


def test_schema_rejects_unknown_keys_and_mixed_payloads() -> None:
    body = encode_readings([Reading("plc1", "p1", 1, 1.0)])
    doc = orjson.loads(encode(row(body), "s", "g"))
    for broken in ({**doc, "extra": 1}, {**doc, "events": []}, {k: v for k, v in doc.items() if k != "seq"}):
        with pytest.raises(jsonschema.ValidationError):
            VALIDATOR.validate(broken)


def test_bad_rows_raise_encode_error() -> None:
    enc = JsonEncoder(Topics("water", "s", "g"))
    with pytest.raises(EncodeError):
        enc.encode(row(b"not json"))
    with pytest.raises(EncodeError):
        enc.encode(row(encode_readings([]), stream="a/b"))


def test_a_row_is_sent_under_the_epoch_of_the_outbox_it_came_from() -> None:
    """While the card is read-only, rows come from an outbox in memory with an epoch of its own
    (docs/durability.md): each message carries its row's epoch, not the uplink's, or the centre
    would take the memory's seqs for the card's."""
    body = encode_readings([Reading("plc1", "flow", 1, 1.0)])
    from_memory = OutboxRow(3, "plc1", 1, "telemetry", 1, 1, body, 2**40 + 1)
    encoder = JsonEncoder(Topics("water", "s", "g"), epoch=99)
    assert orjson.loads(encoder.encode(from_memory).payload)["epoch"] == 2**40 + 1
    assert orjson.loads(encoder.encode(row(body)).payload)["epoch"] == 99  # a row without one
    assert orjson.loads(encode(from_memory, "s", "g", epoch=99))["epoch"] == 2**40 + 1
