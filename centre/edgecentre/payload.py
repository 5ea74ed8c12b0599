"""The documented JSON payload (docs/payload.md, versions 1 and 2) read into rows for the database.

Written from the documented contract, not from the agent's code (the centre never imports the
agent). A message that is not that contract raises `PayloadError` with the reason; the ingest
keeps it in the `rejected` table and moves on.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass
from typing import Any, Final

import orjson
import zstandard

_EXACT = 2**53
# Version 2 adds the outbox `epoch`; a version 1 message is epoch 0 (an outbox from before epochs).
_VERSIONS = (1, 2)
LEGACY_EPOCH: Final = 0
MAX_EPOCH: Final = 2**53 - 1  # as the schema says: exact in every JSON reader
# Checked here rather than left to the database, which refuses the whole batch that carries one (a
# batch it refuses is committed again in halves to find the message: about two transactions for
# each such message, so a gateway sending only those held up every other one). seq, sent_ns and ts
# are bigint columns.
MAX_INT: Final = 2**63 - 1
# Texts an index holds (a reading's tag, an event's kind): an index entry is at most ~2,700 bytes,
# and a character of UTF-8 up to 4. Topic levels as payload.schema.json says.
MAX_NAME: Final = 512
MAX_LEVEL: Final = 64
_QUALITIES = frozenset(("good", "uncertain", "bad"))
_SEVERITIES = frozenset(("info", "warning", "alarm", "critical"))
_NONFINITE = frozenset(("nan", "inf", "-inf"))
# A compressed message is unpacked to at most this much JSON: a gateway's message is one outbox
# row (well under a megabyte); a few hundred bytes of deflate must not become gigabytes in memory.
MAX_JSON_BYTES: Final = 64 * 1024 * 1024
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
# An event's detail is stored as JSON written again here; orjson writes at most this deep (the
# detail object itself is level 1). Deeper raised a TypeError that ended the consumer, and the
# message, unacknowledged, ended it again at every restart.
MAX_DETAIL_DEPTH: Final = 254
# PostgreSQL's text and jsonb refuse the NUL character. JSON can only carry it escaped, so a message
# without this sequence holds none, and the search for it costs one scan of the bytes.
_NUL_ESCAPE: Final = b"\\u0000"
# Topic levels a gateway never publishes data on (docs/durability.md: "Stream names `cmd` and
# `status` are reserved"): `{prefix}/{site}/{gateway}/cmd/...` carries commands *to* the gateway,
# `.../status` its presence. A message there is never stored as that gateway's data, whoever sent it.
RESERVED_STREAMS: Final = frozenset(("cmd", "status"))


class PayloadError(ValueError):
    """The message is not a version 1 or 2 data message; the text says what is wrong."""


@dataclass(frozen=True, slots=True)
class Message:
    """One data message: its identity (site, gateway, stream, epoch, seq) and its rows."""

    site: str
    gateway: str
    stream: str
    epoch: int
    seq: int
    sent_ns: int
    # (tag, ts_ns, value, value_text, quality, reason, unit, source, repeat)
    readings: list[tuple[Any, ...]]
    # (idx, kind, source, ts_ns, severity, score, detail_json)
    events: list[tuple[Any, ...]]

    @property
    def key(self) -> tuple[str, str, str, int]:
        """The seq counter the message belongs to."""
        return self.site, self.gateway, self.stream, self.epoch

    @property
    def items(self) -> int:
        return len(self.readings) + len(self.events)

    @property
    def fingerprint(self) -> int:
        """A signed 64-bit digest of what the message holds, cheap to take (its size and the tags
        and times at its ends): a resend of a row has the same, another gateway's row under the
        same seq (a cloned card) has another."""
        r, e = self.readings, self.events
        ends = (self.items, r[0][:2] if r else None, r[-1][:2] if r else None, e[0][1:4] if e else None)
        return int.from_bytes(
            hashlib.blake2b(repr(ends).encode(), digest_size=8).digest(), "big", signed=True
        )


def _value(value: Any) -> tuple[float | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, bool):
        return (1.0 if value else 0.0), ("true" if value else "false")
    if isinstance(value, int):
        return float(value), (None if -_EXACT <= value <= _EXACT else str(value))
    if isinstance(value, float):
        return value, None
    if isinstance(value, str):
        return None, value
    raise PayloadError(f"value must be a number, boolean, string or null (got {type(value).__name__})")


def _int(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PayloadError(f"{key} must be a non-negative integer (got {value!r})")
    if value > MAX_INT:
        raise PayloadError(f"{key} must be at most 2^63 - 1 (got {value})")
    return value


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{key} must be a non-empty string (got {value!r})")
    return value


def _string(item: dict[str, Any], key: str) -> str:
    value = item[key]
    if not isinstance(value, str):
        raise PayloadError(f"{key} must be a string (got {type(value).__name__})")
    return value


def _compression(content_type: str | None, payload: bytes) -> str:
    """How the payload is compressed: by its MQTT 5 content type, else (an MQTT 3.1.1 delivery
    carries none) by its first bytes; a JSON object starts with `{`, never like these."""
    if content_type is not None:
        for param in content_type.split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "compression":
                return value.strip().lower()
        return "none"
    if payload.startswith(_ZSTD_MAGIC):
        return "zstd"
    if len(payload) >= 2 and payload[0] & 0x0F == 8 and (payload[0] << 8 | payload[1]) % 31 == 0:
        return "deflate"  # a zlib header (RFC 1950): method 8, check bits
    return "none"


def unpack(payload: bytes, content_type: str | None = None) -> bytes:
    """The JSON bytes of a message sent with `[uplink] compression` (docs/payload.md), or as it is."""
    kind = _compression(content_type, payload)
    if kind == "none":
        return payload
    try:
        if kind == "deflate":
            inflater = zlib.decompressobj()
            out = inflater.decompress(payload, MAX_JSON_BYTES + 1)
            if not inflater.eof and len(out) <= MAX_JSON_BYTES:
                raise PayloadError("deflate payload does not decompress: the stream is cut short")
        elif kind == "zstd":
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)) as reader:
                out = reader.read(MAX_JSON_BYTES + 1)
        else:
            raise PayloadError(f"unknown compression {kind!r} in content type {content_type!r}")
    except (zlib.error, zstandard.ZstdError) as exc:
        raise PayloadError(f"{kind} payload does not decompress: {exc}") from exc
    if len(out) > MAX_JSON_BYTES:
        raise PayloadError(f"{kind} payload unpacks to more than {MAX_JSON_BYTES} bytes")
    return out


def parse(topic: str, payload: bytes, content_type: str | None = None) -> Message:
    """Read one data message; the topic's site/gateway/stream must match the body's.

    `content_type` is the MQTT 5 property: a compressed payload is unpacked first."""
    levels = topic.split("/")
    if levels[-1] in RESERVED_STREAMS:
        raise PayloadError(
            f"topic {topic!r}: stream {levels[-1]!r} is reserved (commands to the gateway and its"
            " presence, never its data)"
        )
    payload = unpack(payload, content_type)
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise PayloadError("not a JSON object")
    version = doc.get("v")
    if version not in _VERSIONS or isinstance(version, bool):
        raise PayloadError(f"unknown payload version {version!r} (this ingest reads v 1 and 2)")
    epoch = LEGACY_EPOCH
    if version == 2:
        epoch = _int(doc, "epoch")
        if epoch > MAX_EPOCH:
            raise PayloadError(f"epoch must be at most 2^53 - 1 (got {epoch})")
    site, gateway, stream = _text(doc, "site"), _text(doc, "gateway"), _text(doc, "stream")
    if levels[-3:] != [site, gateway, stream]:
        # Quoted like every other value in a reason: a NUL here made the reason itself unstorable.
        raise PayloadError(f"topic {topic!r} does not end in {f'{site}/{gateway}/{stream}'!r}")
    if max(len(site), len(gateway), len(stream)) > MAX_LEVEL:
        raise PayloadError(f"site, gateway and stream must be at most {MAX_LEVEL} characters each")
    seq, sent_ns = _int(doc, "seq"), _int(doc, "sent_ns")
    if seq < 1:
        raise PayloadError("seq must be >= 1")
    has_readings, has_events = "readings" in doc, "events" in doc
    if has_readings == has_events:
        raise PayloadError("exactly one of readings and events must be present")
    what = "readings" if has_readings else "events"
    items = _objects(doc, what)
    try:
        readings = _readings(items) if has_readings else []
        events = _events(items) if has_events else []
    except KeyError as exc:
        # Which item lacks it: the first one without the key (the loops stop at it).
        key = exc.args[0] if exc.args else "?"
        i = next((i for i, item in enumerate(items) if key not in item), 0)
        raise PayloadError(f"{what}[{i}] has no {key!r}") from None
    if _NUL_ESCAPE in payload:
        _refuse_nul(doc)
    return Message(site, gateway, stream, epoch, seq, sent_ns, readings, events)


def _objects(doc: dict[str, Any], what: str) -> list[dict[str, Any]]:
    items = doc[what]
    if not isinstance(items, list):
        raise PayloadError(f"{what} must be a list (got {type(items).__name__})")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise PayloadError(f"{what}[{i}] must be an object (got {type(item).__name__})")
    return items


def _readings(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out = []
    for r in items:
        quality = r["quality"]
        if type(quality) is not str or quality not in _QUALITIES:  # a list is unhashable
            raise PayloadError(f"quality {quality!r} is not good/uncertain/bad")
        value, text = _value(r["value"])
        nonfinite = r.get("nonfinite")
        if nonfinite is not None:
            # JSON has no NaN: the value is null and this says what it was. Kept as text, so it is
            # not mistaken for a missing value and does not turn a column's avg() into NaN.
            if type(nonfinite) is not str or nonfinite not in _NONFINITE:
                raise PayloadError(f"nonfinite {nonfinite!r} is not nan/inf/-inf")
            text = nonfinite
        ts = r["ts"]
        if type(ts) is not int or not 0 <= ts <= MAX_INT:  # inline: this loop is the hot path
            ts = _int(r, "ts")  # raises, naming the key
        repeat = r.get("repeat", False)
        if "repeat" in r and repeat is not True:
            raise PayloadError(f"repeat must be true when present (got {repeat!r})")
        tag, unit, source, reason = r["tag"], r["unit"], r["source"], r.get("reason")
        if type(tag) is not str or type(unit) is not str or type(source) is not str:
            for key in ("tag", "unit", "source"):
                _string(r, key)  # raises, naming the key
        if len(tag) > MAX_NAME:
            raise PayloadError(f"tag must be at most {MAX_NAME} characters (got {len(tag)})")
        if reason is not None and type(reason) is not str:
            raise PayloadError(f"reason must be a string (got {type(reason).__name__})")
        out.append((tag, ts, value, text, quality, reason, unit, source, repeat))
    return out


def _events(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out = []
    for idx, e in enumerate(items):
        severity = e["severity"]
        if type(severity) is not str or severity not in _SEVERITIES:
            raise PayloadError(f"severity {severity!r} is not info/warning/alarm/critical")
        score = e.get("score")
        if score is not None and (not isinstance(score, (int, float)) or isinstance(score, bool)):
            raise PayloadError(f"score must be a number or null (got {type(score).__name__})")
        detail = e.get("detail", {})
        if not isinstance(detail, dict):
            raise PayloadError(f"detail must be an object (got {type(detail).__name__})")
        try:
            detail_json = orjson.dumps(detail).decode()
        except orjson.JSONEncodeError as exc:  # read up to 1024 levels deep, written up to 254
            raise PayloadError(
                f"events[{idx}] detail nests deeper than {MAX_DETAIL_DEPTH} levels ({exc})"
            ) from None
        kind = _string(e, "kind")
        if len(kind) > MAX_NAME:
            raise PayloadError(f"kind must be at most {MAX_NAME} characters (got {len(kind)})")
        out.append(
            (idx, kind, _string(e, "source"), _int(e, "ts"), severity,
             float(score) if score is not None else None, detail_json)
        )  # fmt: skip
    return out


def _refuse_nul(doc: dict[str, Any]) -> None:
    """PayloadError naming a text (a value or a key, at any depth) that holds a NUL.

    Found here, the message is rejected at no cost to anyone else: the database would refuse the
    whole batch it came in, which then had to be committed again in halves to find it (about two
    transactions per such message: a gateway sending nothing else slowed every other one)."""
    todo: list[tuple[str, Any]] = [("", doc)]
    while todo:
        where, node = todo.pop()
        if isinstance(node, str):
            if "\x00" in node:
                raise PayloadError(
                    f"{where or 'a text'} holds a NUL character (\\u0000), which PostgreSQL refuses"
                )
        elif isinstance(node, dict):
            for key, value in node.items():
                if "\x00" in key:
                    raise PayloadError(
                        f"a key in {where or 'the message'} holds a NUL character (\\u0000),"
                        " which PostgreSQL refuses"
                    )
                todo.append(((f"{where}.{key}" if where else key)[:200], value))  # a key may be 1 MB
        elif isinstance(node, list):
            todo.extend((f"{where}[{i}]"[:200], item) for i, item in enumerate(node))
