"""check-config names the TLS files the agent cannot use, so an engineer finds them at install and
not as a TLS error repeated every backoff; it warns and does not refuse (systemd runs it before
every start, and without its TLS files the agent still reads and buffers the devices)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.pki import Pki
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, write_agent_config
from water_edge.agent.cli import main
from water_edge.agent.config import Config, load_config
from water_edge.agent.config.files import file_problems


def _config(
    tmp_path: Path, ca: Path, cert: Path, key: Path, security: str | None = None, node: str | None = None
) -> Path:
    """A config with these TLS files; `node`: Sparkplug B with this edge_node_id."""
    tls = f'[uplink.tls]\nca_file = "{ca}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    if node is None:
        return write_agent_config(tmp_path, extra=tls, security=security)
    tls += f'[uplink.sparkplug]\nedge_node_id = "{node}"\n'
    return write_agent_config(tmp_path, extra=tls, security=security, uplink={"encoding": "sparkplug_b"})


def _file_problems(config: Config) -> list[str]:
    """`file_problems` but for the warning these certificates all get (see `_warnings`)."""
    return [p for p in file_problems(config) if "will not be renewed" not in p]


def _warnings(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """check-config's warnings, but for the one these certificates all get (made here, outside the
    identity directory, with no claim section: the agent cannot renew them), which
    `test_identity_renewal_offline.py` tests."""
    assert main(["check-config", "-c", str(path)]) == 0
    err = capsys.readouterr().err.splitlines()
    return [line for line in err if "warning" in line and "will not be renewed" not in line]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def test_a_usable_certificate_and_key_give_no_warning(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = pki.client(AGENT_GATEWAY)
    assert _warnings(_config(tmp_path, pki.ca_file, cert, key), capsys) == []


def test_a_certificate_issued_to_another_name_is_named(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped ACL grants topics by the certificate's name: another gateway's certificate (a
    copied SD card image, a mixed-up file) or a Sparkplug node id of its own means every message is
    dropped by the broker without a word, so check-config says so at install."""
    cert, key = pki.client("gw-north-07")
    path = _config(tmp_path, pki.ca_file, cert, key)
    assert _warnings(path, capsys) == [
        f'{path}: warning: uplink.tls.cert_file = "{cert}": issued to "gw-north-07", not to this '
        f'gateway (gateway.id = "{AGENT_GATEWAY}"): a broker that grants topics by the certificate\'s '
        "name, as the shipped ACL does, drops everything the gateway publishes"
    ]
    own_cert, own_key = pki.client(AGENT_GATEWAY)
    config = load_config(_config(tmp_path, pki.ca_file, own_cert, own_key, node="pumps-east"))
    assert _file_problems(config) == [
        f'uplink.sparkplug.edge_node_id = "pumps-east": not the name the certificate "{own_cert}" is '
        f'issued to ("{AGENT_GATEWAY}"): the shipped broker ACL lets an Edge Node publish only under '
        "its certificate's name"
    ]
    same = _config(tmp_path, pki.ca_file, own_cert, own_key, node=AGENT_GATEWAY)
    assert _file_problems(load_config(same)) == []


def test_a_certificate_for_another_site_is_named(tmp_path: Path) -> None:
    """A site-bound broker ACL (`ca acl --dir`) binds a gateway to the site its certificate names:
    a config moved to another site, or a Sparkplug group of its own, is dropped by that broker."""
    pki = Pki(tmp_path / "pki")
    north = pki.device("site-north", AGENT_GATEWAY, "SER-SITE-N", "north")
    config = load_config(_config(tmp_path, pki.ca_file, north.cert_file, north.key_file))
    assert _file_problems(config) == [
        f'uplink.tls.cert_file = "{north.cert_file}": issued for site "north", not this gateway\'s '
        f'(gateway.site = "{AGENT_SITE}"): a broker with a site-bound ACL (edge-agent ca acl --dir) '
        "drops everything the gateway publishes"
    ]
    pki.ca.revoke_name(AGENT_GATEWAY)
    own = pki.device("site-own", AGENT_GATEWAY, "SER-SITE-O", AGENT_SITE)
    tls = (
        f'[uplink.tls]\nca_file = "{pki.ca_file}"\n'
        f'cert_file = "{own.cert_file}"\nkey_file = "{own.key_file}"\n'
    )
    for group, expected in ((AGENT_SITE, []), ("pumps", ["group_id"])):
        path = write_agent_config(
            tmp_path,
            extra=tls + f'[uplink.sparkplug]\ngroup_id = "{group}"\n',
            uplink={"encoding": "sparkplug_b"},
        )
        found = _file_problems(load_config(path))
        assert [p.split(" ")[0].removeprefix("uplink.sparkplug.") for p in found] == expected
    assert found == [
        f'uplink.sparkplug.group_id = "pumps": not the site the certificate "{own.cert_file}" is issued '
        f'for ("{AGENT_SITE}"): a broker with a site-bound ACL (edge-agent ca acl --dir) drops the Edge '
        "Node's births and data in any other group"
    ]


def test_missing_files_are_named_with_their_key_and_the_config_still_passes(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "tls"
    path = _config(tmp_path, gone / "ca.pem", gone / "gw.pem", gone / "gw.key")
    lines = _warnings(path, capsys)
    assert lines == [
        f'{path}: warning: uplink.tls.ca_file = "{gone}/ca.pem": no such file',
        f'{path}: warning: uplink.tls.cert_file = "{gone}/gw.pem": no such file',
        f'{path}: warning: uplink.tls.key_file = "{gone}/gw.key": no such file',
    ]


def test_a_key_of_another_certificate_is_named(tmp_path: Path, pki: Pki) -> None:
    cert, _ = pki.client("gw-1")
    _, other_key = pki.client("gw-2")
    config = load_config(_config(tmp_path, pki.ca_file, cert, other_key))
    assert _file_problems(config) == [
        f'uplink.tls.key_file = "{other_key}": not the key of uplink.tls.cert_file "{cert}"'
    ]


def test_a_key_locked_by_a_passphrase_is_named_without_prompting(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.client("gw-1")
    locked = tmp_path / "locked.key"
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    locked.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"site-password"),
        )
    )
    (problem,) = _file_problems(load_config(_config(tmp_path, pki.ca_file, cert, locked)))
    assert problem.startswith(f'uplink.tls.key_file = "{locked}": protected by a passphrase')


def test_a_file_that_is_not_a_certificate_or_cannot_be_read(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.client("gw-1")
    config = load_config(_config(tmp_path, key, cert, tmp_path))  # the key where the CA belongs
    assert _file_problems(config) == [
        f'uplink.tls.ca_file = "{key}": not a PEM certificate (expected "-----BEGIN CERTIFICATE-----")',
        f'uplink.tls.key_file = "{tmp_path}": a directory, not a file',
    ]


def test_with_a_claim_the_device_certificate_may_wait_for_enrolment(tmp_path: Path, pki: Pki) -> None:
    claim_cert, _ = pki.client("claim")
    identity = tmp_path / "state" / "identity"
    claim = (
        "[security.identity.claim]\n"
        f'cert_file = "{claim_cert}"\nkey_file = "{tmp_path / "no-claim.key"}"\n'
        f'ca_file = "{pki.ca_file}"\nhost = "127.0.0.1"\n'
    )
    config = load_config(
        _config(tmp_path, pki.ca_file, identity / "device.pem", identity / "device.key", claim)
    )
    # The device certificate is not there yet (written at enrolment); the claim's key must be.
    assert _file_problems(config) == [
        f'security.identity.claim.key_file = "{tmp_path / "no-claim.key"}": no such file'
    ]


def test_a_model_manifest_or_opc_ua_certificate_that_is_not_there_is_named_at_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found only when the agent ran, and then without the key: the OPC UA connection failing at
    every retry, the model not loaded."""
    gone = tmp_path / "gone"
    devices = f"""
[[devices]]
name = "ua1"
kind = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
certificate = "{gone}/client.der"
private_key = "{gone}/client.pem"
tags = [{{ name = "flow", node = "ns=2;i=2" }}]
"""
    models = f'[[models.pump]]\nname = "p1"\nmodel = "{gone}/pump.json"\nsignals = {{ flow = "flow" }}\n'
    path = write_agent_config(tmp_path, devices=devices, models=models)
    lines = _warnings(path, capsys)
    assert f'{path}: warning: devices[0] (ua1).certificate = "{gone}/client.der": no such file' in lines
    assert f'{path}: warning: devices[0] (ua1).private_key = "{gone}/client.pem": no such file' in lines
    assert f'{path}: warning: models.pump[0].model = "{gone}/pump.json": no such file' in lines


def test_a_meter_key_that_cannot_be_used_is_named_at_check_config_without_showing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Keys are read when the driver opens, and a meter whose key cannot be used reads bad then:
    check-config (which systemd runs before every start) says so first, as a warning: the other
    meters still run."""
    open_key, short_key = tmp_path / "open.key", tmp_path / "short.key"
    open_key.write_text("0123456789ABCDEF0123456789ABCDEF\n")
    open_key.chmod(0o644)
    short_key.write_text("0123456789ABCDEF0123456789ABCDE\n")
    short_key.chmod(0o600)
    devices = f"""
[[devices]]
name = "meters"
kind = "mbus"
port = "/dev/ttyUSB0"
meters = [
  {{ name = "house1", address = 1, key = {{ file = "{open_key}" }} }},
  {{ name = "house2", address = 2, key = {{ file = "{short_key}" }} }},
  {{ name = "house3", address = 3, key = {{ file = "{tmp_path}/gone.key" }} }},
  {{ name = "house4", address = 4 }},
]
"""
    path = write_agent_config(tmp_path, devices=devices)
    lines = _warnings(path, capsys)
    mine = [line for line in lines if ".meters (" in line]
    assert len(mine) == 3, lines
    assert any("(house1).key:" in line and "readable by others" in line for line in mine), mine
    assert any("(house2).key: a meter key is 32 hex digits (AES-128), got 31" in line for line in mine), mine
    assert any("(house3).key:" in line and "gone.key" in line for line in mine), mine
    assert not any("0123456789ABCDEF" in line for line in lines)
