"""Bad Modbus configs are refused with an error that names the tag and what was expected."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from water_edge.drivers.modbus.config import ModbusTcpConfig


def config(*tags: dict[str, Any], **device: Any) -> ModbusTcpConfig:
    doc = {"name": "ps1", "kind": "modbus_tcp", "host": "10.0.0.5", "tags": list(tags), **device}
    return ModbusTcpConfig.model_validate(doc)


def error_of(*tags: dict[str, Any], **device: Any) -> str:
    with pytest.raises(ValidationError) as info:
        config(*tags, **device)
    return str(info.value)


def test_a_good_config_and_its_defaults() -> None:
    cfg = config({"name": "flow", "address": 100, "type": "float32", "unit": "m3/h"})
    assert (cfg.port, cfg.unit_id, cfg.timeout_ms, cfg.retries) == (502, 1, 1000, 1)
    assert (cfg.max_registers_per_request, cfg.max_bits_per_request, cfg.max_gap) == (125, 2000, 8)
    tag = cfg.tags[0]
    assert (tag.table, tag.byte_order, tag.word_order, tag.scale, tag.offset) == (
        "holding",
        "big",
        "big",
        1.0,
        0.0,
    )
    assert cfg.unit_of(tag) == 1


def test_bool_only_in_bit_tables() -> None:
    msg = error_of({"name": "run", "address": 1, "type": "bool"})
    assert "'run'" in msg
    assert "coil" in msg
    assert "discrete" in msg


def test_bit_tables_only_hold_bool() -> None:
    msg = error_of({"name": "run", "table": "coil", "address": 1, "type": "uint16"})
    assert "'run'" in msg
    assert "bool" in msg


def test_bit_needs_bit_number() -> None:
    assert "'bit' (0..15) is required" in error_of({"name": "s", "address": 1, "type": "bit"})
    assert "only allowed" in error_of({"name": "s", "address": 1, "type": "uint16", "bit": 3})
    assert "less than or equal to 15" in error_of({"name": "s", "address": 1, "type": "bit", "bit": 16})


def test_string_needs_length() -> None:
    assert "'length'" in error_of({"name": "n", "address": 0, "type": "string"})


def test_address_plus_width_must_fit() -> None:
    msg = error_of({"name": "f", "address": 65535, "type": "float32"})
    assert "'f'" in msg
    assert "65535" in msg
    config({"name": "f", "address": 65534, "type": "float32"})  # ends exactly at 65535


def test_address_range() -> None:
    assert "greater than or equal to 0" in error_of({"name": "x", "address": -1})
    assert "less than or equal to 65535" in error_of({"name": "x", "address": 65536})


def test_duplicate_tag_names() -> None:
    msg = error_of({"name": "a", "address": 0}, {"name": "a", "address": 1})
    assert "duplicate tag names: a" in msg


def test_unknown_keys_are_rejected() -> None:
    assert "Extra inputs are not permitted" in error_of({"name": "a", "address": 0, "adress": 1})
    assert "Extra inputs are not permitted" in error_of({"name": "a", "address": 0}, speed=9600)


def test_bad_enumerations() -> None:
    assert "'holding', 'input', 'coil' or 'discrete'" in error_of(
        {"name": "a", "table": "register", "address": 0}
    )
    assert "float32" in error_of({"name": "a", "address": 0, "type": "real"})
    assert "'big' or 'little'" in error_of({"name": "a", "address": 0, "word_order": "swap"})


def test_request_limits() -> None:
    assert "less than or equal to 125" in error_of({"name": "a", "address": 0}, max_registers_per_request=126)
    assert "less than or equal to 2000" in error_of({"name": "a", "address": 0}, max_bits_per_request=2001)
    msg = error_of({"name": "s", "address": 0, "type": "string", "length": 20}, max_registers_per_request=10)
    assert "'s'" in msg
    assert "do not fit in one request" in msg


def test_scale_only_for_numbers() -> None:
    assert "scale/offset" in error_of(
        {"name": "c", "table": "coil", "address": 0, "type": "bool", "scale": 2}
    )


def test_tag_name_pattern_and_unit_id_range() -> None:
    assert "should match pattern" in error_of({"name": "bad name", "address": 0})
    assert "less than or equal to 255" in error_of({"name": "a", "address": 0, "unit_id": 256})


def test_needs_tags_and_kind() -> None:
    assert "at least 1 item" in error_of()
    with pytest.raises(ValidationError, match="modbus_tcp"):
        ModbusTcpConfig.model_validate(
            {"name": "x", "kind": "modbus_rtu", "host": "h", "tags": [{"name": "a", "address": 0}]}
        )
