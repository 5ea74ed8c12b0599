"""USB serial adapters named by their kernel number (`/dev/ttyUSB0`), which can swap at a reboot.

udev cannot run here: its `/dev/serial/by-id` and `/dev/serial/by-path` directories are made in the
test's directory, holding what udev puts there (symlinks), leading to real pseudo-terminals that
stand in for two adapters' nodes. The swap itself is a link moved from one node to the other, as
udev moves it when the kernel numbers the adapters the other way round.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from tests.support.cli import edge_agent_process
from tests.support.configs import config_file
from tests.support.mbus_sim import running_bus
from tests.support.testing import STATUS_SCHEMA, eventually
from water_edge.agent.cli import main
from water_edge.agent.config import Config, load_config
from water_edge.agent.runtime import run_agent
from water_edge.agent.serial_adapters import PORTS_FILE, check_serial_adapters
from water_edge.buffer.codec import decode_events
from water_edge.drivers import serial_names

FTDI = "usb-FTDI_USB-RS485_Cable_FT4A2B3C-if00-port0"
MBUS_MASTER = "usb-Relay_PW3_MBus_Master_M12345-if00-port0"
SOCKET_1 = "platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.1:1.0-port0"
SOCKET_2 = "platform-fd500000.pcie-pci-0000:01:00.0-usb-0:1.2:1.0-port0"


@dataclass
class Udev:
    """udev's two directories of persistent serial names, and two adapters' device nodes."""

    by_id: Path
    by_path: Path
    nodes: tuple[str, str]  # what the kernel numbered 0 and 1 at this boot

    def link(self, directory: Path, name: str, node: str) -> str:
        path = directory / name
        path.unlink(missing_ok=True)
        path.symlink_to(node)
        return str(path)

    def plug(self, node: str, by_id: str | None, socket: str) -> None:
        """An adapter on `node`: its by-id name (None: it has no serial number of its own and
        another adapter holds the shared name) and the USB socket it is in."""
        if by_id is not None:
            self.link(self.by_id, by_id, node)
        self.link(self.by_path, socket, node)

    def unplug_all(self) -> None:
        for link in [*self.by_id.iterdir(), *self.by_path.iterdir()]:
            link.unlink()


@pytest.fixture
def udev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Udev]:
    fds = [fd for _ in range(2) for fd in os.openpty()]
    by_id, by_path = tmp_path / "serial" / "by-id", tmp_path / "serial" / "by-path"
    by_id.mkdir(parents=True)
    by_path.mkdir()
    monkeypatch.setattr(serial_names, "LINK_DIRS", (by_id, by_path))
    try:
        yield Udev(by_id, by_path, (os.ttyname(fds[1]), os.ttyname(fds[3])))
    finally:
        for fd in fds:
            os.close(fd)


RTU_DEVICE = """
[[devices]]
name = "{name}"
kind = "modbus_rtu"
port = "{port}"
baudrate = 19200

  [[devices.tags]]
  name = "flow"
  address = 100
  type = "float32"
"""

MBUS_DEVICE = """
[[devices]]
name = "meters"
kind = "mbus"
port = "{port}"
baudrate = 2400

  [[devices.meters]]
  name = "m1"
  address = 1
"""


def test_a_kernel_numbered_port_is_warned_of_with_the_stable_name_to_put_instead(
    tmp_path: Path, udev: Udev
) -> None:
    plc, meters = udev.nodes
    udev.plug(plc, FTDI, SOCKET_1)
    udev.plug(meters, MBUS_MASTER, SOCKET_2)
    tables = (
        RTU_DEVICE.format(name="plc", port=plc)
        + MBUS_DEVICE.format(port=meters)
        + RTU_DEVICE.format(name="station", port=plc).replace("address = 100", "address = 7")
    )
    warnings = load_config(config_file(tmp_path, tables)).warnings
    swap = "numbered by the kernel in the order it finds USB adapters"
    assert [w for w in warnings if swap in w] == [  # one per port, whatever the devices on it
        f"{tmp_path / 'agent.toml'}: devices[0] (plc).port (and 1 more device(s) on it): {plc} is {swap}, "
        "and with two adapters the "
        "numbers can swap at a reboot: this device would then poll the other adapter's line; use its "
        f"stable name {udev.by_id / FTDI} (the adapter's own, in whichever USB socket)",
        f"{tmp_path / 'agent.toml'}: devices[1] (meters).port: {meters} is {swap}, and with two adapters "
        "the numbers can swap at a reboot: this device would then poll the other adapter's line; use its "
        f"stable name {udev.by_id / MBUS_MASTER} (the adapter's own, in whichever USB socket)",
    ]
    stable = RTU_DEVICE.format(name="plc", port=udev.by_id / FTDI) + MBUS_DEVICE.format(
        port=udev.by_path / SOCKET_2
    )
    assert not [w for w in load_config(config_file(tmp_path, stable)).warnings if swap in w]


def test_adapters_sharing_one_by_id_name_are_told_to_use_the_usb_socket(tmp_path: Path, udev: Udev) -> None:
    """Two CH340 adapters without serial numbers: udev gives their common by-id name to one only,
    so that name can lead to either adapter after a reboot; by-path cannot."""
    first, second = udev.nodes
    udev.plug(first, "usb-1a86_USB_Serial-if00-port0", SOCKET_1)
    udev.plug(second, None, SOCKET_2)
    for node, socket in ((first, SOCKET_1), (second, SOCKET_2)):
        names = serial_names.numbered_port(node)
        assert names is not None
        assert names.preferred() == str(udev.by_path / socket)
        assert names.adapter() == socket
        assert serial_names.numbered_port_advice(node, names).endswith(
            f"use its stable name {udev.by_path / socket} (the USB socket it is plugged into) (adapters "
            "without a serial number of their own share one by-id name)"
        )


def test_what_is_not_a_kernel_number_is_left_alone(tmp_path: Path, udev: Udev) -> None:
    plc, other = udev.nodes
    udev.plug(plc, FTDI, SOCKET_1)
    site_rule = tmp_path / "rs485-north"  # a site's own udev rule: SYMLINK+="rs485-north"
    site_rule.symlink_to(plc)
    assert serial_names.numbered_port(str(udev.by_id / FTDI)) is None
    assert serial_names.numbered_port(str(udev.by_path / SOCKET_1)) is None
    assert serial_names.numbered_port(str(site_rule)) is None
    assert serial_names.numbered_port(other) is None, "a pseudo-terminal or on-board UART udev names not"
    absent = serial_names.numbered_port("/dev/ttyUSB7")  # an adapter not plugged in while checking
    assert absent is not None
    assert absent.preferred() is None
    assert serial_names.numbered_port_advice("/dev/ttyUSB7", absent).endswith(
        "name the adapter by its link in /dev/serial/by-id/ or /dev/serial/by-path/ (ls -l "
        "/dev/serial/by-id/ /dev/serial/by-path/ with it plugged in)"
    )


def test_check_config_prints_the_warning_and_passes(
    tmp_path: Path, udev: Udev, capsys: pytest.CaptureFixture[str]
) -> None:
    plc, _ = udev.nodes
    udev.plug(plc, FTDI, SOCKET_1)
    assert main(["check-config", str(config_file(tmp_path, RTU_DEVICE.format(name="plc", port=plc)))]) == 0
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'agent.toml'}: devices[0] (plc).port: {plc} is numbered" in err
    assert f"use its stable name {udev.by_id / FTDI}" in err


def test_adapters_that_swapped_numbers_since_the_last_start_are_said_once(tmp_path: Path, udev: Udev) -> None:
    port_0, port_1 = udev.nodes
    tables = (
        RTU_DEVICE.format(name="plc", port=port_0)
        + RTU_DEVICE.format(name="station", port=port_0).replace("address = 100", "address = 7")
        + MBUS_DEVICE.format(port=port_1)
    )
    devices = load_config(config_file(tmp_path, tables)).devices
    state = tmp_path / "state"
    udev.plug(port_0, FTDI, SOCKET_1)
    udev.plug(port_1, MBUS_MASTER, SOCKET_2)
    assert check_serial_adapters(state, devices).events == [], "the first start records"
    assert check_serial_adapters(state, devices).events == [], "the same adapters"
    # The next boot numbers the M-Bus master 0 and the RS-485 cable 1.
    udev.plug(port_0, MBUS_MASTER, SOCKET_2)
    udev.plug(port_1, FTDI, SOCKET_1)
    events = check_serial_adapters(state, devices).events
    assert [(e.kind, e.source, e.severity) for e in events] == [
        ("serial_adapter_changed", "plc", "warning"),
        ("serial_adapter_changed", "meters", "warning"),
    ]
    first = events[0].detail
    assert {k: v for k, v in first.items() if k != "what_to_do"} == {
        "port": port_0,
        "devices": ["plc", "station"],
        "previous_adapter": FTDI,
        "adapter": MBUS_MASTER,
        "stable_name": str(udev.by_id / MBUS_MASTER),
    }
    assert first["what_to_do"].startswith(
        f"{port_0} now leads to another USB adapter than at the last start (adapters swapped numbers at "
        f"boot, or one was replaced): check that the line of plc, station is on {MBUS_MASTER}"
    )
    assert check_serial_adapters(state, devices).events == [], "said once: the new adapters are recorded"
    # Unplugged: nothing behind the port to compare; plugged back as it was recorded, nothing to say.
    udev.unplug_all()
    assert check_serial_adapters(state, devices).events == []
    udev.plug(port_0, MBUS_MASTER, SOCKET_2)
    assert check_serial_adapters(state, devices).events == []
    assert (state / PORTS_FILE).exists()


def test_an_unreadable_record_is_started_afresh(tmp_path: Path, udev: Udev) -> None:
    plc, _ = udev.nodes
    udev.plug(plc, FTDI, SOCKET_1)
    devices = load_config(config_file(tmp_path, RTU_DEVICE.format(name="plc", port=plc))).devices
    state = tmp_path / "state"
    state.mkdir()
    (state / PORTS_FILE).write_bytes(b'{"torn')  # a power cut while it was written
    assert check_serial_adapters(state, devices).events == []
    udev.unplug_all()
    udev.plug(plc, MBUS_MASTER, SOCKET_2)
    assert [e.detail["adapter"] for e in check_serial_adapters(state, devices).events] == [MBUS_MASTER]


async def test_scan_mbus_prints_the_stable_name_of_the_port_it_scanned(
    tmp_path: Path, udev: Udev, capsys: pytest.CaptureFixture[str]
) -> None:
    """An engineer scans /dev/ttyUSB0 and pastes what is printed: the port in it is the adapter's
    stable name; without one, the port as given."""
    async with running_bus(tmp_path) as bus:
        node = os.path.realpath(bus.path)
        scan = ["scan", "mbus", "--port", node, "--baudrate", "9600", "--primary", "1-3"]
        udev.plug(node, MBUS_MASTER, SOCKET_1)
        assert await asyncio.to_thread(main, scan) == 0
        assert f'kind = "mbus", port = "{udev.by_id / MBUS_MASTER}"' in capsys.readouterr().out
        udev.unplug_all()
        assert await asyncio.to_thread(main, scan) == 0
        assert f'kind = "mbus", port = "{node}"' in capsys.readouterr().out


async def test_the_agent_says_at_start_which_port_now_leads_to_another_adapter(
    tmp_path: Path, udev: Udev
) -> None:
    """The agent itself (in this process, as udev's directories are this test's): started on one
    numbering, then on the swapped one, it stores a `serial_adapter_changed` event for the centre."""
    port_0, port_1 = udev.nodes
    # the broker's port is closed: every event stays in the outbox, where the test reads it
    no_broker = "port = 1\n"
    config = load_config(config_file(tmp_path, no_broker + RTU_DEVICE.format(name="plc", port=port_0)))
    outbox_path = config.buffer_path

    async def start_and_stop(until: Callable[[list[str]], bool]) -> list[str]:
        run = asyncio.create_task(run_agent(config))
        kinds: list[str] = []
        try:
            for _ in range(300):
                await asyncio.sleep(0.05)
                if outbox_path.exists() and until(kinds := _event_kinds(outbox_path)):
                    break
            return kinds
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            await run

    udev.plug(port_0, FTDI, SOCKET_1)
    udev.plug(port_1, MBUS_MASTER, SOCKET_2)
    # the first start records the adapters (its startup events are stored before agent_started)
    assert "serial_adapter_changed" not in await start_and_stop(lambda kinds: "agent_started" in kinds)
    assert (config.gateway.state_dir / PORTS_FILE).exists()
    udev.unplug_all()
    udev.plug(port_0, MBUS_MASTER, SOCKET_2)
    udev.plug(port_1, FTDI, SOCKET_1)
    changed = await start_and_stop(lambda kinds: "serial_adapter_changed" in kinds)
    assert changed.count("serial_adapter_changed") == 1


def _event_kinds(outbox: Path) -> list[str]:
    """The kinds of the events held in the outbox (read beside the running agent, as `buffer` does)."""
    with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5)) as db:
        bodies = db.execute("SELECT body FROM outbox WHERE stream = 'events'").fetchall()
    return [e.kind for (body,) in bodies for e in decode_events(body)]


@contextlib.asynccontextmanager
async def agent_in_process(config: Config) -> AsyncIterator[None]:
    """The agent running in this process (udev's directories are this test's) until the block ends
    (SIGTERM, as systemd stops it); entered once its status socket answers."""
    run = asyncio.create_task(run_agent(config))
    try:
        await eventually(
            lambda: run.done() or config.status_socket.is_socket(), within_s=15, what="the status socket"
        )
        assert not run.done(), "the agent ended at start"
        yield
    finally:
        if not run.done():
            os.kill(os.getpid(), signal.SIGTERM)
        await run


def _under_each_device(text: str) -> dict[str, list[str]]:
    """`status -v`'s drivers block: {device: the lines under its own}."""
    lines = text.splitlines()
    found: dict[str, list[str]] = {}
    device = None
    for line in lines[lines.index("drivers") + 1 :]:
        if match := re.match(r"^  (\S+)  ", line):
            device = match.group(1)
            found[device] = []
        elif device is not None:
            found[device].append(line.strip())
    return found


async def test_status_names_under_each_device_the_adapter_its_kernel_numbered_port_leads_to(
    tmp_path: Path, udev: Udev
) -> None:
    """A technician's `status -v` says under each device on /dev/ttyUSB0 that the name is
    kernel-numbered and the stable name of the adapter behind it, to configure instead; `--json`
    carries the same. What the start found: a status request looks at no device node."""
    port_0, port_1 = udev.nodes
    udev.plug(port_0, FTDI, SOCKET_1)
    udev.plug(port_1, MBUS_MASTER, SOCKET_2)
    absent = "/dev/ttyUSB97"  # configured, and no adapter behind it at start
    tables = (
        RTU_DEVICE.format(name="plc", port=port_0)
        + RTU_DEVICE.format(name="station", port=port_0).replace("address = 100", "address = 7")
        + MBUS_DEVICE.format(port=udev.by_path / SOCKET_2)
        + RTU_DEVICE.format(name="well", port=absent)
    )
    config = load_config(config_file(tmp_path, "port = 1\n" + tables))  # no broker: it runs offline
    socket = str(config.status_socket)
    use_ftdi = f"serial port {port_0}  kernel-numbered: use {udev.by_id / FTDI}"
    async with agent_in_process(config):
        verbose = await edge_agent_process("status", "-v", "--socket", socket)
        plain = await edge_agent_process("status", "--socket", socket)
        as_json = await edge_agent_process("status", "--json", "--socket", socket)
        # Swapped under the running agent: status still says what the start found.
        udev.unplug_all()
        udev.plug(port_0, MBUS_MASTER, SOCKET_2)
        udev.plug(port_1, FTDI, SOCKET_1)
        again = await edge_agent_process("status", "--json", "--socket", socket)
    assert verbose.returncode == 1, verbose.stderr  # degraded: the uplink is offline
    under = _under_each_device(verbose.stdout)
    assert use_ftdi in under["plc"]
    assert use_ftdi in under["station"]
    assert f"serial port {udev.by_path / SOCKET_2}" in under["meters"]
    assert not [line for line in under["meters"] if "kernel-numbered" in line]
    assert (
        f"serial port {absent}  kernel-numbered, no adapter behind it at start: name the adapter by its "
        "link in /dev/serial/by-id/ or /dev/serial/by-path/"
    ) in under["well"]
    ports = [line for lines in under.values() for line in lines if line.startswith("serial port ")]
    assert len(ports) == 4, verbose.stdout
    assert not set(ports) & {line.strip() for line in plain.stdout.splitlines()}, "only with -v"
    snap = orjson.loads(as_json.stdout)
    jsonschema.validate(snap, STATUS_SCHEMA)
    expected: list[dict[str, Any]] = [
        {"port": port_0, "devices": ["plc", "station"], "kernel_numbered": True,
         "stable_name": str(udev.by_id / FTDI)},
        {"port": str(udev.by_path / SOCKET_2), "devices": ["meters"], "kernel_numbered": False,
         "stable_name": None},
        {"port": absent, "devices": ["well"], "kernel_numbered": True, "stable_name": None},
    ]  # fmt: skip
    assert snap["serial_ports"] == expected
    plc = next(d for d in snap["drivers"] if d["name"] == "plc")
    assert use_ftdi in plc["driver_lines"]
    assert orjson.loads(again.stdout)["serial_ports"] == expected
