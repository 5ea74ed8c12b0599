"""PLC writes through the guard against the firmware-sim PLC: off by default, allow-listed, range-
and rate-limited, read back and audited; only read/write function codes ever go on the wire."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import ModbusPDU

from tests.support.plant import Plant, start_plant
from water_edge.agent.remote.audit import AuditLog, read_audit
from water_edge.agent.writes import WriteGuard, WriteRefusedError, WriteRule, WritesSection, encode, fc_guard
from water_edge.core.reading import now_ns
from water_edge.drivers.modbus.writes import check_write, write_call
from water_edge.sim.registers import STATION_UNIT

SETPOINT = 500  # station.level_setpoint_cm (fwsim WRITABLE_BASE), unit 1


class TcpWriter:
    """The write capability as the Modbus TCP driver will expose it, with every sent PDU recorded."""

    def __init__(self, host: str, port: int) -> None:
        self.sent: list[int] = []
        self.client = AsyncModbusTcpClient(host, port=port, trace_pdu=self._trace, reconnect_delay=0)

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending:
            self.sent.append(int(pdu.function_code))
        return cast(ModbusPDU, fc_guard(sending, pdu))

    async def write(
        self, unit_id: int, table: Any, address: int, registers_or_bits: Sequence[int] | Sequence[bool]
    ) -> None:
        fc, values = check_write(table, address, registers_or_bits)
        response = await write_call(self.client, fc, address, values, unit_id)
        assert not response.isError()

    async def read_back(self, unit_id: int, table: Any, address: int, count: int = 1) -> list[Any]:
        if table == "coil":
            return list((await self.client.read_coils(address, count=count, device_id=unit_id)).bits[:count])
        response = await self.client.read_holding_registers(address, count=count, device_id=unit_id)
        return list(response.registers)


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    p = start_plant(seed=3)
    yield p
    p.stop()


@pytest.fixture
async def writer(plant: Plant) -> AsyncIterator[TcpWriter]:
    w = TcpWriter(plant.host, plant.port)
    await w.client.connect()
    yield w
    w.client.close()


RULE = WriteRule(
    device="station",
    table="holding",
    address=SETPOINT,
    type="uint16",
    min=50,
    max=400,
    max_per_minute=3,
    unit_id=STATION_UNIT,  # what load_config fills in from the device
)


async def test_allow_listed_write_is_read_back_and_audited(writer: TcpWriter, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    guard = WriteGuard(WritesSection(enabled=True, allow=[RULE]), {"station": writer}, audit)
    out = await guard.write("station", "holding", SETPOINT, 275, requested_by="ops:c-7")
    assert out["verified"]
    assert out["read_back"] == [275]
    assert await writer.read_back(1, "holding", SETPOINT) == [275]
    (entry,) = read_audit(tmp_path / "audit.log")
    assert (entry["action"], entry["outcome"]) == ("plc_write", "ok")
    assert (entry["value"], entry["by"]) == (275, "ops:c-7")
    audit.close()


async def test_writes_are_refused_unless_enabled_allowed_in_range_and_in_rate(
    writer: TcpWriter, tmp_path: Path
) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    off = WriteGuard(WritesSection(allow=[RULE]), {"station": writer}, audit)
    with pytest.raises(WriteRefusedError, match="disabled"):
        await off.write("station", "holding", SETPOINT, 100, requested_by="t")

    clock = [1000.0]
    guard = WriteGuard(
        WritesSection(enabled=True, allow=[RULE]), {"station": writer}, audit, clock=lambda: clock[0]
    )
    before = len(writer.sent)
    for address, value, match in [
        (SETPOINT + 1, 50, "not in the write allow-list"),
        (SETPOINT, 401, "outside the allowed 50..400"),
        (SETPOINT, 12.5, "whole numbers"),
        (SETPOINT, float("nan"), "finite number"),
        (SETPOINT, "100", "finite number"),
        (SETPOINT, True, "finite number"),
    ]:
        with pytest.raises(WriteRefusedError, match=match):
            await guard.write("station", "holding", address, value, requested_by="t")
    assert writer.sent[before:] == []  # nothing refused reached the PLC

    for v in (100, 110, 120):
        await guard.write("station", "holding", SETPOINT, v, requested_by="t")
    with pytest.raises(WriteRefusedError, match="more than 3 writes a minute"):
        await guard.write("station", "holding", SETPOINT, 130, requested_by="t")
    clock[0] += 61
    await guard.write("station", "holding", SETPOINT, 140, requested_by="t")

    outcomes = [e["outcome"] for e in read_audit(tmp_path / "audit.log")]
    assert outcomes.count("refused") == 8
    assert outcomes.count("ok") == 4
    # Only reads (1-4) and writes (5, 6, 15, 16) ever went on the wire: never 8 (diagnostics),
    # 17/43 (identification) or programming codes.
    assert set(writer.sent) <= {1, 2, 3, 4, 5, 6, 15, 16}
    assert 6 in writer.sent or 16 in writer.sent
    audit.close()


async def test_a_restart_does_not_give_a_register_a_fresh_minute_of_writes(
    writer: TcpWriter, tmp_path: Path
) -> None:
    """The rate was held in memory only: every restart (a crash loop, a config_update) let each
    register take another `max_per_minute` writes at once. A new guard counts the writes of the
    last minute that the audit log holds, in its newest rotated file too."""
    path = tmp_path / "audit.log"
    audit = AuditLog(path)
    first = WriteGuard(WritesSection(enabled=True, allow=[RULE]), {"station": writer}, audit)
    for v in (100, 110):
        await first.write("station", "holding", SETPOINT, v, requested_by="t")
    audit.close()
    path.rename(path.with_name("audit.log.1"))  # as a rotation leaves it
    stale = now_ns() - 120 * 10**9  # three writes two minutes ago: outside the window
    lines = [
        orjson.dumps({"ts": stale, "action": "plc_write", "outcome": "ok", "device": "station",
                      "table": "holding", "address": SETPOINT})
        for _ in range(3)
    ]  # fmt: skip
    path.write_bytes(b"\n".join([*lines, b'{"ts": 17, "action": "plc_wr']) + b"\n")  # and a torn line

    clock = [500.0]
    audit = AuditLog(path)
    again = WriteGuard(
        WritesSection(enabled=True, allow=[RULE]), {"station": writer}, audit, clock=lambda: clock[0]
    )
    await again.write("station", "holding", SETPOINT, 120, requested_by="t")  # the third this minute
    with pytest.raises(WriteRefusedError, match="more than 3 writes a minute"):
        await again.write("station", "holding", SETPOINT, 130, requested_by="t")
    clock[0] += 61
    await again.write("station", "holding", SETPOINT, 140, requested_by="t")
    audit.close()


def test_forbidden_function_codes_are_stopped_before_sending() -> None:
    from pymodbus.pdu.diag_message import ReturnQueryDataRequest
    from pymodbus.pdu.register_message import WriteSingleRegisterRequest

    with pytest.raises(WriteRefusedError, match="function code 8"):
        fc_guard(True, ReturnQueryDataRequest())
    assert fc_guard(True, WriteSingleRegisterRequest(address=1, registers=[1])) is not None


def test_rule_validation_and_encoding() -> None:
    with pytest.raises(ValueError, match="need both min and max"):
        WriteRule(device="d", table="holding", address=1, type="uint16")
    with pytest.raises(ValueError, match="coils take type 'bool'"):
        WriteRule(device="d", table="coil", address=1, type="uint16", min=0, max=1)
    f = WriteRule(device="d", table="holding", address=1, type="float32", min=-10, max=10)
    assert encode(f, 1.5) == [0x3FC0, 0x0000]
    i = WriteRule(device="d", table="holding", address=1, type="int16", min=-100, max=100)
    assert encode(i, -2) == [0xFFFE]


def test_rules_that_share_a_register_are_refused() -> None:
    """A float32 rule at 499 writes 499 and 500: with its own range it wrote register 500 past the
    range and the rate of the rule made for 500."""
    setpoint = WriteRule(device="d", table="holding", address=500, type="uint16", min=50, max=400)
    wide = WriteRule(device="d", table="holding", address=499, type="float32", min=0, max=1e6)
    with pytest.raises(ValueError, match="both cover d holding 500"):
        WritesSection(enabled=True, allow=[setpoint, wide])
    other_unit = setpoint.model_copy(update={"unit_id": 2, "max": 60000})
    with pytest.raises(ValueError, match="one rule per register"):
        WritesSection(enabled=True, allow=[setpoint, other_unit])
    coil = WriteRule(device="d", table="coil", address=500, type="bool")
    beside = WriteRule(device="d", table="holding", address=501, type="int32", min=0, max=9)
    below = wide.model_copy(update={"address": 498})  # 498 and 499
    assert len(WritesSection(allow=[setpoint, below, coil, beside]).allow) == 4
