"""Values of the right shape that can never work — a NodeId beyond what OPC UA encodes, a host given
with its scheme or port, a unit id no slave answers to, a size or a time too large for any number the
agent computes with — are refused by `check-config` and `run` (exit 2) in one line naming the file,
the key and what was expected, instead of failing on site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.config_checks import refused_everywhere
from tests.support.configs import config_file
from water_edge.agent.config import load_config
from water_edge.drivers.modbus.config import ModbusRtuConfig, ModbusTcpConfig


def refused(
    tmp_path: Path, tables: str, capsys: pytest.CaptureFixture[str], broker: str = "127.0.0.1"
) -> list[str]:
    """The problems of the config (`tables` after the gateway and the uplink to `broker`), checked
    to be what `check-config` and `run` print, without a traceback."""
    path = config_file(tmp_path, tables)
    path.write_text(path.read_text().replace('host = "127.0.0.1"', f"host = {json.dumps(broker)}", 1))
    return refused_everywhere(path, capsys)


OPCUA = """
[[devices]]
name = "ua"
kind = "opcua"
endpoint = "{endpoint}"

  [[devices.tags]]
  name = "pump1.flow"
  node = "ns=2;s=pump1.flow"

  [[devices.tags]]
  name = "pump1.speed"
  node = "{node}"
"""


def opcua(node: str = "ns=2;i=5", endpoint: str = "opc.tcp://10.0.0.5:4840") -> str:
    return OPCUA.format(node=node, endpoint=endpoint)


NO_GUID = "is not a GUID (e.g. g=09087e75-8e5e-499b-954f-f2a9603db28a)"


@pytest.mark.parametrize(
    ("node", "why"),
    [
        ("ns=2;i=4294967296", "numeric identifier i=4294967296 is not in 0..4294967295"),
        ("nsu=urn:vendor:plc;i=4294967296", "numeric identifier i=4294967296 is not in 0..4294967295"),
        ("ns=99999999;i=5", "namespace index 99999999 is not in 0..65535"),
        ("ns=2;g=------------------------------------", f"g=------------------------------------ {NO_GUID}"),
        ("ns=2;g=09087e758e5e499b954ff2a9603db28a----", f"g=09087e758e5e499b954ff2a9603db28a---- {NO_GUID}"),
        ("ns=2;b=abc", "b=abc is not base64 (e.g. b=cHVtcDE= for the bytes of 'pump1')"),
    ],
)
def test_an_opcua_node_id_no_server_can_hold_is_refused_at_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str, why: str
) -> None:
    assert refused(tmp_path, opcua(node), capsys) == [
        f"{tmp_path / 'agent.toml'}: devices[0] (ua).tags[1].node: {why} (got {node!r})"
    ]


@pytest.mark.parametrize(
    "node",
    [
        "ns=2;i=4294967295",
        "ns=65535;i=0",
        "nsu=urn:vendor:plc;i=5",
        "ns=2;g=09087E75-8E5E-499B-954F-F2A9603DB28A",
        "ns=2;b=cHVtcDE=",
        "ns=2;s=a;b=c",
    ],
)
def test_the_node_ids_at_the_edges_of_the_encoding_load(tmp_path: Path, node: str) -> None:
    (device,) = load_config(config_file(tmp_path, opcua(node))).devices
    assert device.tag_names() == frozenset({"pump1.flow", "pump1.speed"})


def test_an_opcua_endpoint_may_name_an_ipv6_address_in_brackets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for endpoint in ("opc.tcp://[::1]:4840", "opc.tcp://[fe80::1]:4840/UA/Server", "opc.tcp://[::1]"):
        (device,) = load_config(config_file(tmp_path, opcua(endpoint=endpoint))).devices
        assert device.endpoint_text() == endpoint
    where = f"{tmp_path / 'agent.toml'}: devices[0] (ua).endpoint"
    assert refused(tmp_path, opcua(endpoint="opc.tcp://[plc1]:4840"), capsys) == [
        f"{where}: [plc1] is not an IPv6 address (a name or IPv4 address goes unbracketed) "
        "(got 'opc.tcp://[plc1]:4840')"
    ]
    assert refused(tmp_path, opcua(endpoint="opc.tcp://plc 1:4840"), capsys) == [
        f"{where}: expected a host name or address, without spaces (got 'opc.tcp://plc 1:4840')"
    ]


URL = (
    "expected a host name or address, not a URL: leave out the scheme (mqtt://, tcp://) and give the "
    "port in 'port'"
)
PORT = (
    "expected a host name or address without ':PORT': give the port in 'port' "
    "(an IPv6 address goes without brackets, e.g. fe80::1)"
)
SPACE = "expected a host name or address, without spaces"


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("mqtt://127.0.0.1:1883", URL),
        ("127.0.0.1 ", SPACE),
        ("127.0.0.1:1883", PORT),
        ("[::1]:1883", PORT),
        ("broker/mqtt", "expected a host name or address, without '/' or a path"),
        ("10.0.0.256", "expected an IPv4 address of four numbers 0..255 (e.g. 10.0.0.5)"),
    ],
)
def test_an_uplink_host_that_cannot_be_connected_to_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str, why: str
) -> None:
    assert refused(tmp_path, "", capsys, broker=host) == [
        f"{tmp_path / 'agent.toml'}: uplink.host: {why} (got {host!r})"
    ]


@pytest.mark.parametrize("host", ["::1", "fe80::1", "broker.plant.example", "mqtt_broker", "10.0.0.5"])
def test_a_bare_ipv6_address_or_a_dns_name_is_a_host(tmp_path: Path, host: str) -> None:
    path = config_file(tmp_path, "")
    path.write_text(path.read_text().replace('host = "127.0.0.1"', f"host = {json.dumps(host)}"))
    assert load_config(path).uplink.host == host


MODBUS_TCP = """
[[devices]]
name = "plc"
kind = "modbus_tcp"
host = "{host}"

  [[devices.tags]]
  name = "pump1.flow"
  address = 100
  type = "float32"
"""


@pytest.mark.parametrize(
    ("host", "why"), [("127.0.0.1:5020", PORT), ("tcp://10.0.0.1", URL), ("10.0.0.1\t", SPACE)]
)
def test_a_modbus_tcp_host_with_its_port_or_scheme_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str, why: str
) -> None:
    assert refused(tmp_path, MODBUS_TCP.format(host=json.dumps(host)[1:-1]), capsys) == [
        f"{tmp_path / 'agent.toml'}: devices[0] (plc).host: {why} (got {host!r})"
    ]
    (device,) = load_config(config_file(tmp_path, MODBUS_TCP.format(host="fe80::1"))).devices
    assert device.endpoint_text() == "[fe80::1]:502"


AUDIO = """
[[devices]]
name = "hyd"
kind = "audio"
source = "stream"
stream_url = "{url}"
"""


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("tcp://127.0.0.1:99999", "port 99999 is not in 1..65535"),
        ("tcp://127.0.0.1:0", "port 0 is not in 1..65535"),
        ("tcp://10.0.0.300:5000", "expected an IPv4 address of four numbers 0..255 (e.g. 10.0.0.5)"),
    ],
)
def test_an_audio_stream_url_that_cannot_be_connected_to_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, why: str
) -> None:
    assert refused(tmp_path, AUDIO.format(url=url), capsys) == [
        f"{tmp_path / 'agent.toml'}: devices[0] (hyd).stream_url: {why} (got {url!r})"
    ]
    (device,) = load_config(config_file(tmp_path, AUDIO.format(url="tcp://hydrophone.local:5000"))).devices
    assert device.endpoint_text() == "tcp://hydrophone.local:5000"


RTU = """
[[devices]]
name = "meters"
kind = "modbus_rtu"
port = "/dev/ttyUSB0"

  [[devices.tags]]
  name = "m1.flow"
  address = 0

  [[devices.tags]]
  name = "m2.flow"
  address = 0
  unit_id = {unit}
"""


@pytest.mark.parametrize("unit", [0, 248, 255])
def test_an_rtu_tags_own_unit_id_must_be_a_slave_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], unit: int
) -> None:
    assert refused(tmp_path, RTU.format(unit=unit), capsys) == [
        f"{tmp_path / 'agent.toml'}: devices[0] (meters).tags[1]: unit_id {unit} on a serial line: "
        "expected 1..247 (0 is broadcast: nobody answers a read; 248..255 are reserved)"
    ]


def test_a_tag_unit_id_of_an_rtu_slave_or_behind_a_tcp_gateway_loads(tmp_path: Path) -> None:
    (rtu,) = load_config(config_file(tmp_path, RTU.format(unit=247))).devices
    assert isinstance(rtu, ModbusRtuConfig)
    assert [rtu.unit_of(tag) for tag in rtu.tags] == [1, 247]
    # Behind a TCP gateway 0 and 255 are common addresses of the gateway's own registers.
    tcp = MODBUS_TCP.format(host="10.0.0.5") + "  unit_id = 0\n"
    (gateway,) = load_config(config_file(tmp_path, tcp)).devices
    assert isinstance(gateway, ModbusTcpConfig)
    assert [gateway.unit_of(tag) for tag in gateway.tags] == [0]


def test_a_size_of_hundreds_of_digits_is_a_problem_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digits = "9" * 400
    assert refused(tmp_path, f'[buffer]\nmax_bytes = "{digits}"\n', capsys) == [
        f"{tmp_path / 'agent.toml'}: buffer.max_bytes: expected a size such as 268435456, '256MiB' or "
        f"'250MB': this one is too large (got {digits!r})"
    ]
    assert refused(tmp_path, f'[buffer]\nmax_bytes = "{digits}TiB"\n', capsys)[0].startswith(
        f"{tmp_path / 'agent.toml'}: buffer.max_bytes: expected a size such as"
    )


PUMP = """
[[models.pump]]
name = "P1"
{extra}
  [models.pump.signals]
  flow = "pump1.flow"

[[devices]]
name = "plc"
kind = "modbus_tcp"
host = "10.0.0.5"

  [[devices.tags]]
  name = "pump1.flow"
  address = 100
  type = "float32"
"""


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ("stale_after_s = 1e300", "stale_after_s: Input should be less than or equal to 86400 (got 1e+300)"),
        ("window_s = 1e12", "window_s: Input should be less than or equal to 86400 (got 1000000000000.0)"),
        (
            "sample_interval_s = 1e-10",
            "sample_interval_s: Input should be greater than or equal to 0.01 (got 1e-10)",
        ),
    ],
)
def test_pump_times_are_bounded_to_what_the_processor_can_count_in_nanoseconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, why: str
) -> None:
    assert refused(tmp_path, PUMP.format(extra=extra), capsys) == [
        f"{tmp_path / 'agent.toml'}: models.pump[0].{why}"
    ]
    day = "stale_after_s = 86400\nwindow_s = 86400\nsample_interval_s = 0.01"
    (pump,) = load_config(config_file(tmp_path, PUMP.format(extra=day))).models["pump"]
    assert (pump.stale_after_s, pump.window_s, pump.sample_interval_s) == (86400, 86400, 0.01)
