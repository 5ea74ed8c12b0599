"""The Modbus TCP face of the simulator: the one fwsim module that touches pymodbus.

pymodbus's server asks its datastore context for values per request; `PlantContext` answers
straight from the `Plant` register images (no copy per tick, one slice per request), refuses
unmapped addresses with exception 2, reads of more registers than the plant's limit with 3
(`Plant.max_read_registers`), writes outside the documented writable area with exception 2
and out-of-range values with 3 (`Plant.write`), function codes other than 1-6, 15 and 16 with 1,
and unknown unit IDs with exception 0x0B (function 43/14, Read Device Identification, is answered
per unit: `fwsim.identification`), "gateway target device failed to respond", the answer a
Modbus TCP gateway gives for a slave that is not there (pymodbus's own SimCore would answer
exception 4 instead). Communication faults (`fwsim.faults.CommFaults`) add latency or silence:
a silent PLC sends nothing back, so the client times out.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.mei_message import ReadDeviceInformationRequest, ReadDeviceInformationResponse
from pymodbus.server import ModbusTcpServer

from water_edge.sim import identification
from water_edge.sim.faults import CommFaults
from water_edge.sim.registers import STATION_UNIT, Plant, Table

_FUNCTION_TABLES: dict[int, Table] = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
# pymodbus reads back after a write with the write's function code
_READ_BACK_TABLES: dict[int, Table] = {5: "coil", 15: "coil", 6: "holding", 16: "holding"}
PROTOCOL = "modbus_tcp"


class PlantContext(ModbusServerContext):
    """A pymodbus datastore context backed by a `Plant`.

    pymodbus 3.16 accepts a `ModbusServerContext` whose `old_simulator` flag is set and then only
    calls `async_getValues`, `async_setValues` and `device_ids`; those are all this provides.
    The base initialiser is not called on purpose: it builds per-address simulator structures
    (and logs a deprecation warning) that this context replaces.
    """

    def __init__(  # pylint: disable=super-init-not-called
        self, plant: Plant, comm: CommFaults | None = None, any_unit: bool = False
    ) -> None:
        self.plant = plant
        self.comm = comm or CommFaults()
        # A PLC that ignores the unit ID (most Modbus TCP devices that are not gateways): every unit
        # ID reads the station PLC.
        self.any_unit = any_unit
        self.old_simulator = True
        self.simdevices = []

    def unit_of(self, device_id: int) -> int:
        return STATION_UNIT if self.any_unit else device_id

    async def _misbehave(self, device_id: int) -> None:
        """Apply the communication faults in force: wait out latency, drop the request if silent."""
        latency = self.comm.latency_s(PROTOCOL, device_id)
        if latency > 0:
            await asyncio.sleep(latency)
        if self.comm.silent(PROTOCOL, device_id):
            # with ignore_missing_devices the request handler sends nothing back
            raise NoSuchIdException(f"unit {device_id} silenced by a scenario")

    async def async_getValues(  # noqa: N802 - pymodbus names it
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        await self._misbehave(device_id)
        unit = self.plant.units.get(self.unit_of(device_id))
        if unit is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = _FUNCTION_TABLES.get(func_code) or _READ_BACK_TABLES.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if count > self.plant.read_limit(table):
            return ExcCodes.ILLEGAL_VALUE
        values = unit.read(table, address, count)
        if values is None:
            return ExcCodes.ILLEGAL_ADDRESS
        if table in ("coil", "discrete"):
            return [bool(v) for v in values]
        return values

    async def async_setValues(  # noqa: N802 - pymodbus names it
        self,
        device_id: int,
        func_code: int,
        address: int,
        values: Sequence[int] | Sequence[bool],
    ) -> ExcCodes | None:
        await self._misbehave(device_id)
        device_id = self.unit_of(device_id)
        if device_id not in self.plant.units:
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = _READ_BACK_TABLES.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        code = self.plant.write(device_id, table, address, [int(v) for v in values])
        return None if code is None else ExcCodes(code)

    def device_ids(self) -> list[int]:
        return sorted(self.plant.units)


class _UnitIdentification(ReadDeviceInformationRequest):
    """Function 43/14 answered per unit from `fwsim.identification` (pymodbus's own request gives
    every unit ID, present or not, one identity of the server's)."""

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        unit = context.unit_of(device_id) if isinstance(context, PlantContext) else device_id
        found = identification.objects(unit, self.read_code, self.object_id)
        if isinstance(found, int):
            return ExceptionResponse(self.function_code, ExcCodes(found))
        return ReadDeviceInformationResponse(
            read_code=self.read_code, information=found, dev_id=device_id, transaction_id=self.transaction_id
        )


async def start_modbus_tcp(
    plant: Plant, host: str, port: int, comm: CommFaults | None = None, any_unit: bool = False
) -> tuple[ModbusTcpServer, int]:
    """Listen on host:port (0 = any free port); return the server and the port it got. `any_unit`:
    answer every unit ID as the station PLC (a PLC that ignores the unit ID)."""
    context = PlantContext(plant, comm, any_unit)
    rng = random.Random(port)  # noqa: S311 - simulated line noise, not cryptography

    def spoil(sending: bool, frame: bytes) -> bytes:
        # A `garbage` comm fault replaces that share of answers with random bytes of the same
        # length (a broken MBAP header or PDU): the client must discard it and time out.
        share = context.comm.garbage(PROTOCOL)
        if sending and share > 0 and rng.random() < share:
            return rng.randbytes(len(frame))
        return frame

    server = ModbusTcpServer(context, address=(host, port), ignore_missing_devices=True, trace_packet=spoil)
    # Unavoidable internals: pymodbus 3.16 picks a function 43 request's class from its decoder's
    # sub-function table, which `custom_pdu` does not reach; this server's own copy gets ours.
    # tests/test_modbus_scan.py fails (every unit the same empty identity) if this stops working.
    sub_table = {fc: dict(subs) for fc, subs in DecodePDU.pdu_sub_table.items()}
    sub_table.setdefault(identification.FUNCTION, {})[identification.MEI_READ_DEVICE_ID] = (
        _UnitIdentification,
        ReadDeviceInformationResponse,
    )
    server.decoder.pdu_sub_table = sub_table
    await server.serve_forever(background=True)
    listener = server.transport  # the asyncio.Server that listen() created
    if not isinstance(listener, asyncio.Server):
        raise OSError(f"modbus server did not start listening on {host}:{port}")
    return server, int(listener.sockets[0].getsockname()[1])
