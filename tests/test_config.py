"""The config file: valid files load, and every mistake is one clear line naming file, key and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from water_edge.agent.cli import main
from water_edge.agent.config import load_config
from water_edge.core.errors import ConfigError

# Literal text on purpose (not tests/support/testing.py's builder): each test edits this text and
# checks that the problem points at the file, the key or the line.
GOOD = """
schema_version = 1

[gateway]
site = "north-plant"
id = "gw-01"
state_dir = "{state}"

[uplink]
host = "127.0.0.1"
port = 1883

[buffer]
max_bytes = "64MiB"

[[devices]]
name = "sim"
kind = "fake"
poll_interval_ms = 500

  [[devices.tags]]
  name = "flow"
  unit = "m3/h"
  offset = 100.0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text.replace("{state}", str(tmp_path / "state")))
    return path


def problems_for(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


def test_valid_file_loads_with_defaults_and_derived_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.gateway.site == "north-plant"
    assert config.buffer.max_bytes == 64 * 2**20
    assert config.buffer.synchronous == "full"
    assert config.buffer_path == tmp_path / "state" / "outbox.sqlite"
    assert config.status_socket == tmp_path / "state" / "status.sock"
    (device,) = config.devices
    assert device.kind == "fake"
    assert device.stream_name == "sim"
    assert config.uplink.prefix == "water"


def test_unknown_key_names_file_and_key_path(tmp_path: Path) -> None:
    text = GOOD.replace('unit = "m3/h"', 'unit = "m3/h"\n  scael = 2.0')
    (problem,) = problems_for(tmp_path, text)
    assert str(tmp_path / "agent.toml") in problem
    assert "devices[0] (sim).tags[0].scael" in problem
    assert "unknown key" in problem


def test_wrong_type_and_range_say_what_was_expected(tmp_path: Path) -> None:
    text = GOOD.replace("poll_interval_ms = 500", 'poll_interval_ms = "fast"').replace(
        "port = 1883", "port = 99999"
    )
    problems = problems_for(tmp_path, text)
    assert any("devices[0] (sim).poll_interval_ms" in p and "integer" in p for p in problems)
    assert any("uplink.port" in p and "99999" in p for p in problems)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace('site = "north-plant"', 'site = "north plant/1"').replace(
        'kind = "fake"', 'kind = "modbus_udp"'
    )
    problems = problems_for(tmp_path, text)
    assert any("gateway.site" in p for p in problems)
    assert any("devices[0] (sim).kind" in p and "unknown driver 'modbus_udp'" in p for p in problems)


def test_schema_version_is_checked_with_everything_else(tmp_path: Path) -> None:
    (problem,) = problems_for(tmp_path, GOOD.replace("schema_version = 1", "schema_version = 7"))
    assert "schema_version: expected 1 (got 7)" in problem
    both = GOOD.replace("schema_version = 1", "").replace('site = "north-plant"', "")
    assert problems_for(tmp_path, both) == [
        f"{tmp_path / 'agent.toml'}: schema_version: required key is missing (expected 1)",
        f"{tmp_path / 'agent.toml'}: gateway.site: required key is missing",
    ]


def test_an_empty_file_says_what_a_config_needs(tmp_path: Path) -> None:
    (problem,) = problems_for(tmp_path, "# nothing yet\n")
    assert "the file holds no settings" in problem
    assert "schema_version = 1, [gateway] and [uplink]" in problem
    assert "None" not in problem


def test_a_number_in_quotes_is_text_not_a_number(tmp_path: Path) -> None:
    text = GOOD.replace("port = 1883", 'port = "1883"').replace(
        "poll_interval_ms = 500", 'poll_interval_ms = "500"'
    )
    problems = problems_for(tmp_path, text)
    assert problems == [
        f"{tmp_path / 'agent.toml'}: uplink.port: expected an integer, without quotes (got '1883')",
        f"{tmp_path / 'agent.toml'}: devices[0] (sim).poll_interval_ms: expected an integer, without quotes "
        "(got '500')",
    ]
    # An integer where a number with a fraction is expected is fine: TOML writes 100 for 100.0.
    load_config(write(tmp_path, GOOD.replace("offset = 100.0", "offset = 100")))


def test_a_key_with_several_forms_is_one_problem_in_the_files_words(tmp_path: Path) -> None:
    # `password` is text or a secret reference: pydantic fails it once per form, under internal
    # names ("password.str", "password.function-after[_exactly_one(), SecretRef]").
    source = tmp_path / "agent.toml"
    with_password = GOOD.replace("port = 1883", "port = 1883\nusername = 'gw'\npassword = {value}")
    problems = problems_for(tmp_path, with_password.replace("{value}", "42"))
    assert problems == [
        f'{source}: uplink.password: expected a string or a table {{ file = "…" }} or {{ env = "…" }} '
        "(value not shown)"
    ]
    # Written as a table: what is wrong inside it, at its own key.
    problems = problems_for(
        tmp_path, with_password.replace("{value}", '{ fil = "/etc/edge-agent/mqtt.pass" }')
    )
    assert problems == [
        f"{source}: uplink.password.fil: unknown key (not part of the schema; check the spelling)"
    ]
    problems = problems_for(tmp_path, with_password.replace("{value}", '{ file = "/a", env = "B" }'))
    assert problems == [
        f"{source}: uplink.password: a secret reference takes exactly one of 'file' or 'env' "
        "(value not shown)"
    ]


def test_a_choice_of_words_or_a_number_lists_both(tmp_path: Path) -> None:
    fake_device = GOOD[GOOD.index('kind = "fake"') :]
    text = GOOD.replace(fake_device, 'kind = "audio"\nsource = "device"\nchannels = 1\nlatency = "medium"\n')
    assert problems_for(tmp_path, text) == [
        f"{tmp_path / 'agent.toml'}: devices[0] (sim).latency: expected 'low' or 'high' or a number "
        "(got 'medium')"
    ]


def test_a_name_with_mqtt_wildcards_or_spaces_says_what_a_name_may_hold(tmp_path: Path) -> None:
    text = GOOD.replace('name = "flow"', 'name = "pump1/flow#"').replace(
        'site = "north-plant"', 'site = "north plant"'
    )
    problems = problems_for(tmp_path, text)
    rule = (
        "expected a name of letters, digits, '_', '.' and '-', starting with a letter or digit "
        "(no spaces, no '/', '+' or '#')"
    )
    assert problems == [
        f"{tmp_path / 'agent.toml'}: gateway.site: {rule} (got 'north plant')",
        f"{tmp_path / 'agent.toml'}: devices[0] (sim).tags[0].name: {rule} (got 'pump1/flow#')",
    ]
    assert not any("pattern" in p for p in problems)


def test_a_relative_state_dir_is_refused_it_would_follow_the_working_directory(tmp_path: Path) -> None:
    # Under systemd the working directory is /: "state" would put the outbox in /state, and an
    # engineer testing by hand from their home would find another outbox there.
    text = GOOD.replace('state_dir = "{state}"', 'state_dir = "state"')
    assert text != GOOD
    assert problems_for(tmp_path, text) == [
        f"{tmp_path / 'agent.toml'}: gateway.state_dir: expected an absolute path, e.g. "
        "/var/lib/edge-agent (got 'state')"
    ]


def test_a_status_socket_path_too_long_for_the_kernel_is_refused_by_name(tmp_path: Path) -> None:
    # Before, the agent started and died binding it with a traceback ("AF_UNIX path too long").
    deep = "/srv/" + "edge-agent-state-of-the-north-plant-gateway/" * 3
    text = GOOD.replace('state_dir = "{state}"', f'state_dir = "{deep}"')
    socket = f"{deep}status.sock"
    assert problems_for(tmp_path, text) == [
        f"{tmp_path / 'agent.toml'}: status.socket: the status socket {socket} is {len(socket)} bytes "
        "long; a Unix socket's path holds at most 107: set [status] socket to a shorter absolute "
        "path, or use a shorter gateway.state_dir"
    ]
    # What the message advises works: the state stays where it is, the socket moves.
    config = load_config(write(tmp_path, text + '\n[status]\nsocket = "/run/edge-agent/status.sock"\n'))
    assert config.status_socket == Path("/run/edge-agent/status.sock")


OPCUA_DEVICE = """
name = "ua"
kind = "opcua"
endpoint = "opc.tcp://10.0.0.5:4840"

  [[devices.tags]]
  name = "pump1.flow"
  node = "ns=2;s=pump1.flow"
"""


def test_an_opcua_endpoint_and_node_id_are_explained_not_shown_as_a_pattern(tmp_path: Path) -> None:
    fake_device = GOOD[GOOD.index('name = "sim"') :]
    opcua = GOOD.replace(fake_device, OPCUA_DEVICE)
    load_config(write(tmp_path, opcua))
    source = tmp_path / "agent.toml"
    endpoint = "expected an OPC UA endpoint opc.tcp://HOST[:PORT][/PATH] (e.g. opc.tcp://10.0.0.5:4840)"
    node_id = (
        "expected a NodeId: [ns=<index>; or nsu=<namespace URI>;] then i=<number>, s=<text>, g=<GUID> "
        "or b=<base64> (e.g. ns=2;s=pump1.flow, nsu=urn:vendor:plc;i=5)"
    )
    text = opcua.replace('"opc.tcp://10.0.0.5:4840"', '"10.0.0.5:4840"').replace(
        '"ns=2;s=pump1.flow"', '"ns=2,s=pump1.flow"'
    )
    assert problems_for(tmp_path, text) == [
        f"{source}: devices[0] (ua).endpoint: {endpoint} (got '10.0.0.5:4840')",
        f"{source}: devices[0] (ua).tags[0].node: {node_id} (got 'ns=2,s=pump1.flow')",
    ]
    text = opcua.replace("10.0.0.5:4840", "10.0.0.5:484000")
    assert problems_for(tmp_path, text) == [
        f"{source}: devices[0] (ua).endpoint: port 484000 is not in 1..65535 (got 'opc.tcp://10.0.0.5:484000')"
    ]


RS485_DEVICES = """
name = "plc-rtu"
kind = "modbus_rtu"
port = "/dev/ttyUSB0"
baudrate = 19200

  [[devices.tags]]
  name = "pump1.flow"
  address = 100
  type = "float32"

[[devices]]
name = "meter-rtu"
kind = "modbus_rtu"
port = "/dev/ttyUSB0"
baudrate = 19200
unit_id = 2

  [[devices.tags]]
  name = "flow"
  table = "input"
  address = 0
  type = "float32"
"""


def test_devices_on_one_serial_port_must_agree_on_its_line(tmp_path: Path) -> None:
    fake_device = GOOD[GOOD.index('name = "sim"') :]
    rs485 = GOOD.replace(fake_device, RS485_DEVICES)
    assert [d.name for d in load_config(write(tmp_path, rs485)).devices] == ["plc-rtu", "meter-rtu"]
    source = tmp_path / "agent.toml"
    # Whichever device opened second used to fail on site ("line settings ... differ").
    slower = rs485.replace("baudrate = 19200\nunit_id = 2", "baudrate = 9600\nunit_id = 2")
    assert problems_for(tmp_path, slower) == [
        f"{source}: devices[1] (meter-rtu).port: /dev/ttyUSB0 is also plc-rtu's, at Modbus RTU 19200 8E1; "
        "devices on one port share its protocol and line settings (got Modbus RTU 9600 8E1)"
    ]
    mbus = rs485 + '\n[[devices]]\nname = "meters"\nkind = "mbus"\nport = "/dev/ttyUSB0"\n'
    mbus += '\n  [[devices.meters]]\n  name = "house1"\n  address = 1\n'
    assert problems_for(tmp_path, mbus) == [
        f"{source}: devices[2] (meters).port: /dev/ttyUSB0 is also plc-rtu's, at Modbus RTU 19200 8E1; "
        "devices on one port share its protocol and line settings (got M-Bus 2400 Bd)"
    ]


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    (problem,) = problems_for(tmp_path, GOOD.replace('id = "gw-01"', 'id = "gw-01'))
    assert "not valid TOML" in problem
    assert "line" in problem


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    # Windows editors save "UTF-8 with BOM"; tomllib alone says "Invalid statement (line 1)".
    path = write(tmp_path, GOOD)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_config(path).gateway.site == "north-plant"


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        ("utf-16", "the file is UTF-16 text; save it as UTF-8"),
        ("utf-16-le", "the file holds NUL bytes: UTF-16 text or not a text file; save it as UTF-8"),
        ("utf-32", "the file is UTF-32 text; save it as UTF-8"),
        ("latin-1", "not UTF-8 text (invalid continuation byte on line 1); save it as UTF-8"),
    ],
)
def test_a_config_in_another_encoding_says_which_and_what_to_do(
    tmp_path: Path, encoding: str, expected: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(f"# café\n{GOOD}".encode(encoding))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: {expected}"]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.toml")


def test_a_duplicate_tag_does_not_hide_a_duplicate_device(tmp_path: Path) -> None:
    plc = '\n[[devices]]\nname = "plc"\nkind = "modbus_tcp"\nhost = "10.0.0.5"\n'
    tag = '[[devices.tags]]\nname = "level"\naddress = 0\ntype = "float32"\n'
    problems = problems_for(tmp_path, GOOD + plc + tag + plc + tag + tag)
    assert any("devices[2] (plc)" in p and "duplicate tag names: level" in p for p in problems), problems
    assert any("devices[2].name: device name 'plc' is used twice (also devices[1])" in p for p in problems)


def test_a_config_too_big_for_the_unit_is_valid_with_a_warning_and_the_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tags = "".join(f'\n  [[devices.tags]]\n  name = "t{i}"\n' for i in range(80_000))
    big = write(tmp_path, GOOD.replace("  offset = 100.0\n", "  offset = 100.0\n" + tags))
    assert main(["check-config", "-c", str(big)]) == 0
    out, err = capsys.readouterr()
    assert "80,001 tags" in out
    (warning,) = [line for line in err.splitlines() if "MemoryMax" in line]
    need = int(warning.split("will need about ")[1].split(" MiB")[0])
    assert 256 < need < 300, warning  # 60 MiB to run + 2.65 KiB per tag, measured (bench_config_memory)
    assert "systemd would kill it" in warning


def test_mqtt_3_1_1_is_valid_with_a_warning_that_a_denied_topic_goes_unseen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    default = write(tmp_path, GOOD)
    assert main(["check-config", "-c", str(default)]) == 0
    assert "uplink.protocol" not in capsys.readouterr().err
    old = write(tmp_path, GOOD.replace("port = 1883\n", 'port = 1883\nprotocol = "3.1.1"\n'))
    assert main(["check-config", "-c", str(old)]) == 0
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "uplink.protocol" in line]
    assert warning.startswith(f"warning: {old}: uplink.protocol:")
    assert "deleted as delivered" in warning


def test_duplicate_device_names_and_reserved_streams(tmp_path: Path) -> None:
    second = GOOD.split("[[devices]]")[1]
    reserved = '\n[[devices]]\nname = "x"\nkind = "fake"\nstream = "events"\n[[devices.tags]]\nname = "a"\n'
    text = GOOD + "[[devices]]" + second + reserved
    problems = problems_for(tmp_path, text)
    assert any("'sim' is used twice" in p for p in problems)
    assert any("'events' is reserved" in p for p in problems)


def test_bad_size_string(tmp_path: Path) -> None:
    (problem,) = problems_for(tmp_path, GOOD.replace('"64MiB"', '"lots"'))
    assert "buffer.max_bytes" in problem
    assert "256MiB" in problem


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, GOOD)
    assert main(["check-config", "-c", str(good)]) == 0
    out, err = capsys.readouterr()
    assert "OK (1 devices, 1 tags" in out
    assert "MiB to run" in out
    assert err == ""
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("[gateway]", "[gateway]\ncolour = 'blue'"))
    assert main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "gateway.colour" in err
    assert "Traceback" not in err
    # The file as a plain argument, as people type it first.
    assert main(["check-config", str(bad)]) == 2
    assert "gateway.colour" in capsys.readouterr().err
    assert main(["check-config", str(good)]) == 0


DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


# Agent configs: deploy/*.toml and deploy/samples/*.toml (deploy/scenarios/ holds firmware-sim files).
@pytest.mark.parametrize(
    "path", sorted([*DEPLOY.glob("*.toml"), *DEPLOY.glob("samples/*.toml")]), ids=lambda p: p.name
)
def test_every_shipped_example_config_is_valid(path: Path) -> None:
    config = load_config(path)
    assert config.devices, f"{path} configures no device"
