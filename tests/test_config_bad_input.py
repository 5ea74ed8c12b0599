"""Config inputs that used to end in a traceback, or to be taken silently: each is now one line
naming the file, the key and what was expected, and `check-config` and `run` exit 2."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.config_checks import refused_everywhere
from water_edge.agent.cli import main
from water_edge.agent.config import load_config
from water_edge.agent.remote.audit import AuditLog
from water_edge.agent.remote.config import OperatorKey, SecuritySection
from water_edge.agent.remote.handlers import Targets, build_handlers
from water_edge.agent.remote.nonces import NonceStore
from water_edge.agent.remote.processor import CommandProcessor
from water_edge.core import envelope
from water_edge.models.config_file import processor_sections
from water_edge.models.flow_leak.config import FlowLeakSection

GOOD = """
schema_version = 1

[gateway]
site = "north-plant"
id = "gw-01"
state_dir = "{state}"

[uplink]
host = "127.0.0.1"
port = 1883

[[models.flow_leak]]
name = "dma-north"
inflow = ["plc/inlet.flow"]
timezone = "Europe/Rome"

[[devices]]
name = "plc"
kind = "modbus_tcp"
host = "10.0.0.5"

  [[devices.tags]]
  name = "inlet.flow"
  address = 0
  type = "float32"
  scale = 0.1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text.replace("{state}", str(tmp_path / "state")))
    return path


def refused(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The problems `check-config` prints for `text` (exit 2), checked to be `run`'s too."""
    return refused_everywhere(write(tmp_path, text), capsys)


def test_the_good_file_is_valid(tmp_path: Path) -> None:
    load_config(write(tmp_path, GOOD))


def test_nan_and_inf_are_refused_where_a_number_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # orjson wrote nan and inf as null: an optional key took it as "not set", an unbounded number
    # (a scale) said "expected a number (got None)".
    text = (
        GOOD.replace("scale = 0.1", "scale = nan")
        .replace("port = 1883", "port = 1883\nreconnect_min_s = -inf")
        .replace('timezone = "Europe/Rome"', "timezone = inf")
        + "\n[buffer]\nmax_age_s = nan\n"
    )
    source = tmp_path / "agent.toml"
    assert refused(tmp_path, text, capsys) == [
        f"{source}: uplink.reconnect_min_s: Input should be greater than 0 (got -inf)",
        f"{source}: buffer.max_age_s: Input should be greater than 0 (got nan)",
        f"{source}: models.flow_leak[0].timezone: expected a string (got inf)",
        f"{source}: devices[0] (plc).tags[0].scale: expected a finite number (got nan)",
    ]


def test_a_device_name_that_is_no_text_is_a_problem_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # TypeError: unhashable type: 'list', where devices on one serial port are compared.
    text = GOOD.replace('name = "plc"', 'name = ["plc"]')
    problems = refused(tmp_path, text, capsys)
    assert f"{tmp_path / 'agent.toml'}: devices[0].name: expected a string" in problems


def test_a_time_zone_too_long_for_a_file_name_is_an_unknown_zone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # OSError: [Errno 36] File name too long, from zoneinfo.
    zone = "Europe/" + "x" * 300
    text = GOOD.replace('timezone = "Europe/Rome"', f'timezone = "{zone}"')
    (problem,) = refused(tmp_path, text, capsys)
    assert problem.startswith(
        f"{tmp_path / 'agent.toml'}: models.flow_leak[0].timezone: unknown time zone '{zone}' "
        "(expected an IANA name such as 'Europe/Amsterdam')"
    )


def test_true_is_not_the_number_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Python's True == 1, and pydantic's Literal[1] took it even in strict mode.
    rtu = '\n[[devices]]\nname = "meter"\nkind = "modbus_rtu"\nport = "/dev/ttyUSB0"\nstopbits = true\n'
    rtu += '  [[devices.tags]]\n  name = "flow"\n  address = 0\n'
    text = GOOD.replace("schema_version = 1", "schema_version = true") + rtu
    source = tmp_path / "agent.toml"
    assert refused(tmp_path, text, capsys) == [
        f"{source}: schema_version: expected 1 (got True)",
        f"{source}: devices[1] (meter).stopbits: expected 1 or 2 (got True)",
    ]


def test_text_holding_a_nul_character_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A path with a NUL passed check-config, then failed where it was opened: "ValueError: embedded
    # null byte" (check-config's TLS file check, the password file, the state directory at start).
    text = GOOD.replace('state_dir = "{state}"', 'state_dir = "/var/lib/edge\\u0000agent"').replace(
        "port = 1883", 'port = 1883\nusername = "gw"\npassword = { file = "/etc/edge-agent/pass\\u0000word" }'
    )
    source = tmp_path / "agent.toml"
    assert refused(tmp_path, text, capsys) == [
        f"{source}: gateway.state_dir: expected text without a NUL character (\\u0000) "
        "(got '/var/lib/edge\\x00agent')",
        f"{source}: uplink.password.file: expected text without a NUL character (\\u0000) (value not shown)",
    ]


def test_values_nested_past_the_parsers_limit_are_a_toml_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # tomli raises RecursionError past 400 levels: a traceback from check-config and run, and from a
    # config_update's validation.
    text = GOOD + "\n[extra]\nvalue = " + "[" * 1000 + "]" * 1000 + "\n"
    source = tmp_path / "agent.toml"
    (problem,) = refused(tmp_path, text, capsys)
    assert problem.startswith(f"{source}: not valid TOML: TOML inline arrays/tables are nested more than")


def test_a_write_rule_names_a_device_that_can_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rule = '\n[writes]\nenabled = true\n[[writes.allow]]\ndevice = "{device}"\ntable = "holding"\n'
    rule += 'address = 500\ntype = "uint16"\nmin = 0\nmax = 100\n'
    load_config(write(tmp_path, GOOD + rule.replace("{device}", "plc")))
    fake = '\n[[devices]]\nname = "sim"\nkind = "fake"\n  [[devices.tags]]\n  name = "level"\n'
    source = tmp_path / "agent.toml"
    # A misspelt device: every write refused on site, when the set-point is needed.
    assert refused(tmp_path, GOOD + rule.replace("{device}", "pcl"), capsys) == [
        f"{source}: writes.allow[0].device: expected the name of a device whose driver writes, e.g. "
        "Modbus (got 'pcl'; such devices: plc)"
    ]
    assert refused(tmp_path, GOOD + fake + rule.replace("{device}", "sim"), capsys) == [
        f"{source}: writes.allow[0].device: expected the name of a device whose driver writes, e.g. "
        "Modbus (got 'sim', of kind fake; such devices: plc)"
    ]


RTU_LINE = """
[[devices]]
name = "rtu-a"
kind = "modbus_rtu"
port = "/dev/ttyUSB0"
unit_id = 1
  [[devices.tags]]
  name = "sp"
  address = 10

[[devices]]
name = "rtu-b"
kind = "modbus_rtu"
port = "/dev/ttyUSB0"
unit_id = 5
  [[devices.tags]]
  name = "sp"
  address = 10
"""


def test_a_write_rule_writes_to_its_devices_unit_and_no_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two PLCs on one serial line: a rule for the second without a unit ID used to write to unit 1,
    the first PLC's set-point."""

    def rule(device: str, unit: str = "") -> str:
        return (f'\n[[writes.allow]]\ndevice = "{device}"\ntable = "holding"\naddress = 10\ntype = "uint16"\n'
                f"min = 0\nmax = 100\n{unit}")  # fmt: skip

    writes = "\n[writes]\nenabled = true\n"
    config = load_config(write(tmp_path, GOOD + RTU_LINE + writes + rule("rtu-b") + rule("plc")))
    assert [(r.device, r.unit_id) for r in config.writes.allow] == [("rtu-b", 5), ("plc", 1)]
    gateway = GOOD.replace('  scale = 0.1\n', '  scale = 0.1\n  [[devices.tags]]\n  name = "meter.flow"\n'
                           "  address = 0\n  unit_id = 2\n")  # fmt: skip
    config = load_config(write(tmp_path, gateway + writes + rule("plc", "unit_id = 2\n")))
    assert [r.unit_id for r in config.writes.allow] == [2], "a unit one of the device's tags reads"
    source = tmp_path / "agent.toml"
    assert refused(tmp_path, GOOD + RTU_LINE + writes + rule("rtu-b", "unit_id = 1\n"), capsys) == [
        f"{source}: writes.allow[0].unit_id: expected a unit device 'rtu-b' reads (5); got 1, which would "
        "be another device on its line or behind its gateway"
    ]
    assert refused(tmp_path, GOOD + RTU_LINE + writes + rule("rtu-a", "unit_id = 0\n"), capsys) == [
        f"{source}: writes.allow[0].unit_id: expected 1..247 on a serial line (got 0: 0 is a broadcast "
        "every slave obeys, 248-255 are reserved)"
    ]


def test_an_outbox_quota_beyond_what_sqlite_holds_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Passed check-config; `run` then died opening the outbox: "OverflowError: Python int too
    # large to convert to SQLite INTEGER".
    (problem,) = refused(tmp_path, GOOD + '\n[buffer]\nmax_bytes = "10000000TiB"\n', capsys)
    expected = f"{tmp_path / 'agent.toml'}: buffer.max_bytes: Input should be less than or equal to"
    assert problem.startswith(expected)


def test_machine_sound_of_clips_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Passed check-config; the processor then failed to start: "OverflowError: Python int too
    # large to convert to C ssize_t" (a deque of that length).
    mic = '\n[[devices]]\nname = "mic"\nkind = "audio"\nsource = "stream"\nstream_url = "tcp://127.0.0.1:5050"\n'
    sound = '\n[[models.machine_sound]]\nname = "p1-sound"\ndevice = "mic"\n'
    sound += "of_clips = 100000000000000000000\n"
    (problem,) = refused(tmp_path, GOOD.replace("[[devices]]", sound + "\n[[devices]]", 1) + mic, capsys)
    assert problem == (
        f"{tmp_path / 'agent.toml'}: models.machine_sound[0].of_clips: Input should be less than or "
        "equal to 1000 (got 100000000000000000000)"
    )


def test_a_validator_that_says_what_it_got_is_not_repeated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace('timezone = "Europe/Rome"', 'timezone = "Europe/Rome"\nnight_start = "25:00"')
    assert refused(tmp_path, text, capsys) == [
        f"{tmp_path / 'agent.toml'}: models.flow_leak[0].night_start: expected local time as 'HH:MM', "
        "e.g. '02:00' (got '25:00')"
    ]


def test_the_offline_tools_reader_names_file_and_key_not_a_traceback(tmp_path: Path) -> None:
    # `edge-agent models ...` read `gateway` and `models` as tables without asking: AttributeError.
    path = tmp_path / "agent.toml"
    for text, expected in [
        ("gateway = [1]\n", f"{path}: gateway: expected a table (got [1])"),
        ("models = 3\n", f"{path}: models: expected a table (got 3)"),
        ("[gateway]\nstate_dir = 5\n", f"{path}: gateway.state_dir: expected a string (got 5)"),
        (
            '[[models.flow_leak]]\nname = "a"\ninflow = [1]\n',
            f"{path}: models.flow_leak[0].inflow[0]: Input should be a valid string",
        ),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            processor_sections(path, "flow_leak", FlowLeakSection)


async def test_a_config_update_with_such_a_file_is_refused_by_name_and_the_old_one_stays(
    tmp_path: Path,
) -> None:
    running = write(tmp_path, GOOD)
    before = running.read_text()
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public_b64 = base64.b64encode(public).decode()
    operator = OperatorKey(name="ops", public_key=public_b64, commands=["config_update"])
    nonces, audit = NonceStore(tmp_path / "nonces.sqlite"), AuditLog(tmp_path / "audit.log")
    targets = Targets(config_path=running, request_restart=lambda reason: None)
    processor = CommandProcessor(
        SecuritySection(operators=[operator]),
        site="north-plant",
        gateway="gw-01",
        nonces=nonces,
        audit=audit,
        handlers=build_handlers(targets),
    )
    # Before: the first was "failed: internal error: TypeError", the second written and applied.
    for new, problem in [
        (GOOD.replace('name = "plc"', 'name = ["plc"]'), "new config: devices[0].name: expected a string"),
        (
            GOOD.replace('timezone = "Europe/Rome"', "timezone = nan"),
            "new config: models.flow_leak[0].timezone: expected a string (got nan)",
        ),
    ]:
        args = {"config": new.replace("{state}", str(tmp_path / "state"))}
        payload = envelope.sign(key, "ops", "config_update", "north-plant/gw-01", args)
        result = await processor.handle("config_update", payload)
        assert (result.status, result.reason) == ("failed", "new config is invalid; the old one stays")
        assert result.detail is not None
        assert problem in result.detail["problems"]
        assert running.read_text() == before
    nonces.close()
    audit.close()


def test_a_file_that_never_ends_is_refused_not_read_into_memory(capsys: pytest.CaptureFixture[str]) -> None:
    """`check-config -c /dev/zero` (or a huge log given by mistake) read until memory ran out."""
    assert main(["check-config", "-c", "/dev/zero"]) == 2
    assert "/dev/zero: more than 64 MiB: not a config file" in capsys.readouterr().err
