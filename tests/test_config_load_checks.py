"""`load_config`'s checks across sections and devices, found by writing configs as an OT engineer
does: serial ports named by a link and by its target, the state directory and its files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_config import GOOD, RS485_DEVICES, problems_for, write
from water_edge.agent.cli import main
from water_edge.agent.config import load_config


def test_a_port_named_by_a_link_and_by_its_target_is_one_port(tmp_path: Path) -> None:
    """/dev/serial/by-id/... in one device and the /dev/ttyUSB0 it leads to in another share one
    port: their line settings must agree (the devices then share the port at run time)."""
    tty = tmp_path / "ttyUSB0"
    tty.touch()
    (tmp_path / "usb-FTDI-if00-port0").symlink_to(tty)
    fake_device = GOOD[GOOD.index('name = "sim"') :]
    rs485 = GOOD.replace(fake_device, RS485_DEVICES)
    linked = rs485.replace('port = "/dev/ttyUSB0"', f'port = "{tty}"', 1).replace(
        'port = "/dev/ttyUSB0"', f'port = "{tmp_path / "usb-FTDI-if00-port0"}"'
    )
    assert [d.name for d in load_config(write(tmp_path, linked)).devices] == ["plc-rtu", "meter-rtu"]
    slower = linked.replace("baudrate = 19200\nunit_id = 2", "baudrate = 9600\nunit_id = 2")
    assert problems_for(tmp_path, slower) == [
        f"{tmp_path / 'agent.toml'}: devices[1] (meter-rtu).port: {tmp_path / 'usb-FTDI-if00-port0'} is also "
        "plc-rtu's, at Modbus RTU 19200 8E1; devices on one port share its protocol and line settings "
        "(got Modbus RTU 9600 8E1)"
    ]


def test_the_state_directory_and_the_files_in_it_are_what_the_agent_can_use(tmp_path: Path) -> None:
    """Each of these passed check-config; `run` then ended in a traceback, refused to open the
    outbox, or (the nonce database in the outbox's file) quarantined the outbox as damaged."""
    source = tmp_path / "agent.toml"
    state = tmp_path / "state"
    (tmp_path / "a-file").touch()
    a_file = GOOD.replace('state_dir = "{state}"', f'state_dir = "{tmp_path / "a-file"}"')
    assert problems_for(tmp_path, a_file) == [
        f"{source}: gateway.state_dir: expected a directory (got {tmp_path / 'a-file'}, a file)"
    ]
    state.mkdir()
    (state / "spool").mkdir()
    not_a_directory = "expected a file, not a directory"
    of_its_own = "expected a file of its own"
    empty = "expected a file name or path (got an empty value or '.')"
    cases = {
        '[buffer]\npath = ""\n': f"buffer.path: {empty}",
        '[security]\naudit_log = ""\n': f"security.audit_log: {empty}",
        '[buffer]\npath = "spool"\n': f"buffer.path: {not_a_directory} (got 'spool', {state / 'spool'})",
        '[security]\naudit_log = "/tmp"\n': f"security.audit_log: {not_a_directory} (got '/tmp', /tmp)",
        '[security]\nnonce_db = "outbox.sqlite"\n': (
            f"security.nonce_db: {of_its_own} (got {state / 'outbox.sqlite'}, which is buffer.path)"
        ),
        '[status]\nsocket = "./nonces.sqlite"\n': (
            f"security.nonce_db: {of_its_own} (got {state / 'nonces.sqlite'}, which is status.socket)"
        ),
    }  # fmt: skip
    for section, problem in cases.items():
        # in place of GOOD's [buffer] table: a TOML file holds a table once
        text = GOOD.replace('[buffer]\nmax_bytes = "64MiB"\n', section)
        assert problems_for(tmp_path, text) == [f"{source}: {problem}"], section


def test_a_state_directory_the_system_refuses_is_one_line_at_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unmakeable = GOOD.replace('state_dir = "{state}"', 'state_dir = "/proc/edge-agent-state"')
    assert main(["run", "--config", str(write(tmp_path, unmakeable))]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("edge-agent: "), err
    assert err.strip().splitlines()[-1].endswith("/proc/edge-agent-state"), err


def test_a_relative_path_is_refused_where_it_would_follow_the_working_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked by hand in the config's directory, `password = { file = "sec/mqtt.pass" }` was
    found; the service, started in /, could not read it and did not start (a relative CA file:
    TLS retried for ever)."""
    (tmp_path / "sec").mkdir()
    (tmp_path / "sec" / "mqtt.pass").write_text("s3cret\n")
    (tmp_path / "sec" / "mqtt.pass").chmod(0o600)
    monkeypatch.chdir(tmp_path)
    text = GOOD.replace(
        "port = 1883\n", 'port = 1883\nusername = "gw"\npassword = { file = "sec/mqtt.pass" }\n'
    )
    text += '\n[[devices]]\nname = "hyd"\nkind = "audio"\nsource = "file"\npath = "night.wav"\n'
    source = tmp_path / "agent.toml"
    why = (
        "expected an absolute path: the agent runs from / under systemd, not from where the file is "
        "checked by hand"
    )
    problems = problems_for(tmp_path, text)
    assert f"{source}: uplink.password.file: {why} (got 'sec/mqtt.pass')" in problems, problems
    assert f"{source}: devices[1] (hyd).path: {why} (got 'night.wav')" in problems, problems
    assert not [p for p in problems if "cannot read" in p], "the relative file is not looked for"
    absolute = text.replace('"sec/mqtt.pass"', f'"{tmp_path / "sec" / "mqtt.pass"}"')
    assert not [p for p in problems_for(tmp_path, absolute) if "password" in p]


def test_a_time_written_without_quotes_and_a_list_written_as_one_table_are_named(tmp_path: Path) -> None:
    source = tmp_path / "agent.toml"
    audio = '\n[[devices]]\nname = "hyd"\nkind = "audio"\nsource = "stream"\n'
    audio += 'stream_url = "tcp://127.0.0.1:5050"\nchannels = 1\nnight_start = 02:30\n'
    # TOML reads 02:30 as a time; the message said (got '02:30:00') to someone who typed 02:30
    assert problems_for(tmp_path, GOOD + audio) == [
        f"{source}: devices[1] (hyd).night_start: expected local time as 'HH:MM', e.g. '02:00' (got "
        '02:30:00: TOML reads 02:30 without quotes as a time; write "02:30")'
    ]
    one_table = GOOD.replace("  [[devices.tags]]", "  [devices.tags]")
    assert problems_for(tmp_path, one_table) == [
        f"{source}: devices[0] (sim).tags: expected a list of tables: [[devices.tags]], in double brackets "
        "([devices.tags] is one table)"
    ]


def test_key_paths_read_as_the_file_is_written(tmp_path: Path) -> None:
    reserved = '\n[[devices]]\nname = "x"\nkind = "fake"\nstream = "events"\n[[devices.tags]]\nname = "a"\n'
    assert problems_for(tmp_path, GOOD + reserved) == [
        f"{tmp_path / 'agent.toml'}: devices[1] (x).stream: 'events' is reserved for the agent's own messages"
    ]


def test_check_config_takes_one_file_and_reads_the_system_ca_bundle_quietly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = write(tmp_path, GOOD), tmp_path / "other.toml"
    second.write_text(GOOD.replace("{state}", str(tmp_path / "state")))
    # `-c A.toml B.toml` checked B alone and said OK
    assert main(["check-config", "-c", str(first), str(second)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"edge-agent check-config: two files given ({first} and {second}); check one at a time"
    )
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not bundle.is_file():
        pytest.skip("no system CA bundle here")
    tls = GOOD.replace("port = 1883\n", f'port = 8883\n[uplink.tls]\nca_file = "{bundle}"\n')
    # a process of its own: pytest would catch the warning that an engineer sees on stderr
    done = subprocess.run(
        [sys.executable, "-m", "water_edge.agent.cli", "check-config", "-c", str(write(tmp_path, tls))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, "old roots with negative serial numbers: cryptography's own words"


def test_a_report_by_exception_rule_that_can_match_no_reading_is_refused(tmp_path: Path) -> None:
    rbe = '\n[uplink.rbe]\ndeadband = 0.0\n\n[[uplink.rbe.tags]]\nmatch = "{match}"\ndeadband = 0.5\n'

    def with_rule(match: str) -> str:
        return GOOD.replace("[buffer]\n", rbe.replace("{match}", match) + "\n[buffer]\n")

    for fits in ("sim/flow", "*/flow", "*flow"):
        load_config(write(tmp_path, with_rule(fits)))
    assert problems_for(tmp_path, with_rule("flow")) == [
        f"{tmp_path / 'agent.toml'}: uplink.rbe.tags[0].match: expected a 'device/tag' pattern, e.g. "
        "'plc/flow', or '*/flow' for every device (got 'flow', which matches no reading)"
    ]


def test_a_model_fed_only_by_a_disabled_device_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pump = '\n[[models.pump]]\nname = "p1"\n[models.pump.signals]\nflow = "sim/flow"\n'
    disabled = GOOD.replace("poll_interval_ms = 500\n", "poll_interval_ms = 500\nenabled = false\n")
    assert main(["check-config", "-c", str(write(tmp_path, disabled + pump))]) == 0
    err = capsys.readouterr().err
    assert (
        "models.pump[0].signals.flow: 'sim/flow' comes from device 'sim', which is disabled "
        "(enabled = false): none arrives"
    ) in err, err
    assert main(["check-config", "-c", str(write(tmp_path, GOOD + pump))]) == 0
    assert "disabled" not in capsys.readouterr().err
