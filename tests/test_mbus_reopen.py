"""firmware-sim's M-Bus port is opened, closed and opened again as a real master's port is: the
commissioning of docs/drivers/mbus.md (scan, paste the printed meters into a config, probe it,
run) against one running bus. Before, a pseudo-terminal took 8E1 at its first open only: every
later scan, probe or agent said `the port refuses 2400 Bd 8E1 (Invalid argument)` until edge-sim
was restarted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import serial

from tests.support.cli import edge_agent_process
from tests.support.mbus_sim import bus_config, read_once, running_bus
from water_edge.drivers.mbus.link import MbusMaster
from water_edge.sim.pty_link import PtyLink

# A program ending and the next one starting take far longer than this; the sim notices a close
# on its event loop, so the test lets that run between two opens, as two programs would.
BETWEEN_PROGRAMS_S = 0.2


async def test_scan_then_probe_of_the_pasted_meters_then_scan_again_on_one_running_bus(
    tmp_path: Path,
) -> None:
    async with running_bus(tmp_path / "sim") as bus:
        scanned = await edge_agent_process("scan", "mbus", "--port", bus.path, "--baudrate", "9600")
        assert scanned.returncode == 0, scanned.stderr
        devices = tmp_path / "mb.toml"
        devices.write_text(
            f'[[devices]]\nname = "mb1"\nkind = "mbus"\nport = "{bus.path}"\nbaudrate = 9600\n\n'
            + scanned.stdout[scanned.stdout.index("[[devices.meters]]") :]
        )
        probe = await edge_agent_process("probe", "--devices-file", str(devices))
        again = await edge_agent_process("scan", "mbus", "--port", bus.path, "--baudrate", "9600")
        # and the agent after them, twice (a restart): the driver opens, reads and closes the port
        runs = [
            await read_once(bus_config(bus, [{"name": f"m{m.spec.address}", "address": m.spec.address}]))
            for m in bus.meters[:2]
        ]
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert "UNREACHABLE" not in probe.stdout
    assert f"mb1 (mbus, {bus.path} 9600 Bd): 36 readings" in probe.stdout
    volumes = [line.split() for line in probe.stdout.splitlines() if line.split()[0].endswith(".volume")]
    assert len(volumes) == 4
    assert all(words[-1] == "good" for words in volumes), probe.stdout
    assert again.returncode == 0, again.stderr
    assert f"M-Bus {bus.path} at 9600 Bd: 4 meter(s)" in again.stdout
    for (readings, _), address in zip(runs, (1, 2), strict=True):
        assert readings[f"m{address}.volume"].quality == "good", readings[f"m{address}.volume"].reason


async def test_the_bus_port_takes_8e1_at_every_open_even_when_nothing_was_sent(tmp_path: Path) -> None:
    """A program that opens the port and ends without a request (a probe stopped at once, a
    check that the port is there) left it refusing the next one."""
    async with running_bus(tmp_path) as bus:
        for _ in range(4):
            master = MbusMaster(bus.path, bus.baudrate)
            master.open()  # raised DriverIOError: ... refuses 9600 Bd 8E1 (Invalid argument) ...
            master.close()
            await asyncio.sleep(BETWEEN_PROGRAMS_S)
        readings, _ = await read_once(bus_config(bus, [{"name": "m1", "address": 1}]))
    assert readings["m1.volume"].quality == "good", readings["m1.volume"].reason


async def test_a_master_reopening_at_once_after_a_request_is_taken(tmp_path: Path) -> None:
    """The bus sets its line back as a request arrives, so a close and an immediate reopen (the
    driver reconnecting, one command after another in a script) never meet a pty still set up."""
    snd_nke_1 = bytes.fromhex("1040014116")

    def reopen_and_ask(path: str, baudrate: int) -> list[bytes | None]:
        answers = []
        for _ in range(5):
            master = MbusMaster(path, baudrate, retries=0)
            master.open()
            answers.append(master.exchange(snd_nke_1))
            master.close()
        return answers

    async with running_bus(tmp_path) as bus:
        answers = await asyncio.to_thread(reopen_and_ask, bus.path, bus.baudrate)
    assert answers == [b"\xe5"] * 5


async def test_a_sim_serial_port_takes_a_parity_at_every_open(tmp_path: Path) -> None:
    """The Modbus RTU and wM-Bus faces' ptys (`PtyLink`): a program asking for 8E1 (mbpoll -P
    even, a stick tool) is taken at every open, not only the first."""
    link = PtyLink(tmp_path / "ttySIM")
    link.plug()
    try:
        for _ in range(3):
            port = serial.Serial(str(link.link), 19200, parity=serial.PARITY_EVEN, timeout=0)
            port.close()
            await asyncio.sleep(BETWEEN_PROGRAMS_S)
    finally:
        link.close()
