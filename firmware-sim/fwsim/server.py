"""The Modbus TCP face of the simulator: the one fwsim module that touches pymodbus.

pymodbus's server asks its datastore context for values per request; `PlantContext` answers
straight from the `Plant` register images (no copy per tick, one slice per request), refuses
unmapped addresses with exception 2, writes with exception 1 (the map is read-only for now) and
unknown unit IDs with exception 0x0B, "gateway target device failed to respond", the answer a
Modbus TCP gateway gives for a slave that is not there (pymodbus's own SimCore would answer
exception 4 instead).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.server import ModbusTcpServer

from fwsim.registers import Plant, Table

_FUNCTION_TABLES: dict[int, Table] = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


class PlantContext(ModbusServerContext):
    """A pymodbus datastore context backed by a `Plant`.

    pymodbus 3.16 accepts a `ModbusServerContext` whose `old_simulator` flag is set and then only
    calls `async_getValues`, `async_setValues` and `device_ids`; those are all this provides.
    The base initialiser is not called on purpose: it builds per-address simulator structures
    (and logs a deprecation warning) that this context replaces.
    """

    def __init__(self, plant: Plant) -> None:  # pylint: disable=super-init-not-called
        self.plant = plant
        self.old_simulator = True
        self.simdevices = []

    async def async_getValues(  # noqa: N802 - pymodbus names it
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        unit = self.plant.units.get(device_id)
        if unit is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = _FUNCTION_TABLES.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
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
        if device_id not in self.plant.units:
            return ExcCodes.GATEWAY_NO_RESPONSE
        return ExcCodes.ILLEGAL_FUNCTION

    def device_ids(self) -> list[int]:
        return sorted(self.plant.units)


async def start_modbus_tcp(plant: Plant, host: str, port: int) -> tuple[ModbusTcpServer, int]:
    """Listen on host:port (0 = any free port); return the server and the port it got."""
    server = ModbusTcpServer(PlantContext(plant), address=(host, port))
    await server.serve_forever(background=True)
    listener = server.transport  # the asyncio.Server that listen() created
    if not isinstance(listener, asyncio.Server):
        raise OSError(f"modbus server did not start listening on {host}:{port}")
    return server, int(listener.sockets[0].getsockname()[1])
