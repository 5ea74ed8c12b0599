"""`edge-agent probe`: a commissioning engineer reads a device once from the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support.plant import running_plant
from tests.support.testing import demo_devices, free_port


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "water_edge.agent.cli", "probe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_probe_reads_every_tag_of_a_live_plc(tmp_path: Path) -> None:
    with running_plant(seed=3) as plant:
        devices = tmp_path / "devices.toml"
        devices.write_text(demo_devices(plant.port))
        human = probe("--devices-file", str(devices))
        as_json = probe("--devices-file", str(devices), "pump-station", "--json")
    assert human.returncode == 0, human.stderr
    assert human.stderr == "", "library log lines leaked into the output"
    header, *table = human.stdout.splitlines()
    assert re.fullmatch(
        rf"pump-station \(modbus_tcp, 127\.0\.0\.1:{plant.port}\): \d+ readings at "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}",
        header,
    ), header
    assert "PS-NORTH" in human.stdout
    # Columns line up, and a float32 register is shown at its own precision (at most 9
    # significant digits), not as a double; a float64 tag (the tank level) may carry more.
    assert len({line.index(" good") for line in table}) == 1, table
    float32_tags = {
        tag["name"]
        for device in tomllib.loads(devices.read_text())["devices"]
        for tag in device.get("tags", [])
        if tag.get("type") == "float32"
    }
    shown = {line.split()[0]: line.split()[1] for line in table}
    assert float32_tags & shown.keys(), (float32_tags, shown)
    digits = {
        tag: len(value.replace("-", "").replace(".", "").lstrip("0"))
        for tag, value in shown.items()
        if tag in float32_tags
    }
    assert all(n <= 9 for n in digits.values()), digits
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {r["tag"] for r in rows} >= {"station.name", "pump1.flow", "meter.total"}
    assert all(r["quality"] == "good" for r in rows)
    flow = next(r for r in rows if r["tag"] == "pump1.flow")
    assert flow["unit"] == "m3/h"
    assert isinstance(flow["value"], float)


def test_listening_leaves_a_device_that_does_not_listen_read_as_always(tmp_path: Path) -> None:
    """`probe -c config --listen 120` on a gateway with PLCs besides its meter receivers: a PLC's
    good readings were thrown away for '0 meter(s) heard', exit 1."""
    with running_plant(seed=3) as plant:
        devices = tmp_path / "devices.toml"
        devices.write_text(demo_devices(plant.port))
        listened = probe("--devices-file", str(devices), "pump-station", "--listen", "1")
        as_json = probe("--devices-file", str(devices), "pump-station", "--listen", "1", "--json")
    assert listened.returncode == 0, listened.stdout + listened.stderr
    assert "meter(s) heard" not in listened.stdout
    assert listened.stdout.startswith("pump-station (modbus_tcp, "), listened.stdout
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {r["tag"] for r in rows} >= {"pump1.flow", "meter.total"}


def test_probe_of_an_unreachable_plc_says_why_and_exits_1(tmp_path: Path) -> None:
    devices = tmp_path / "devices.toml"
    devices.write_text(demo_devices(free_port()))
    result = probe("--devices-file", str(devices))
    assert result.returncode == 1
    assert "UNREACHABLE" in result.stdout
    assert "connection refused" in result.stdout


def test_probe_of_an_unknown_device_is_a_usage_error(tmp_path: Path) -> None:
    devices = tmp_path / "devices.toml"
    devices.write_text(demo_devices(5020))
    result = probe("--devices-file", str(devices), "no-such-plc")
    assert result.returncode == 2
    assert "no device named 'no-such-plc'" in result.stderr
    assert "pump-station" in result.stderr
    assert "invalid configuration" not in result.stderr  # the file is fine; the name is not in it


def test_probe_of_a_host_that_does_not_resolve_says_so_in_words(tmp_path: Path) -> None:
    devices = tmp_path / "devices.toml"
    devices.write_text(demo_devices(502).replace('host = "127.0.0.1"', 'host = "plc-x.invalid"'))
    result = probe("--devices-file", str(devices))
    assert result.returncode == 1
    assert "cannot resolve host plc-x.invalid: " in result.stdout, result.stdout
    assert "unknown error" not in result.stdout
    assert result.stderr == "", result.stderr


def test_a_devices_file_saved_as_utf16_is_named_not_a_traceback(tmp_path: Path) -> None:
    devices = tmp_path / "devices.toml"
    devices.write_text(demo_devices(5020), encoding="utf-16")
    result = probe("--devices-file", str(devices))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "invalid configuration:",
        f"  {devices}: the file is UTF-16 text; save it as UTF-8",
    ]
