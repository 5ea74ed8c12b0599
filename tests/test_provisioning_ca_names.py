"""Docs walk 4, finding 10: the CA signed a device CSR for `GW-01` while `gw-01` held a valid
certificate, and for `Centre`, `CLAIM-x` and `Sparkplug-Host`, refusing only the lower-case names.
Mosquitto tells them apart, but people, logs and dashboards need not: the CA now compares names
without regard to letter case (`edge-agent ca sign`, the command an installer runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from water_edge.agent.cli import main
from water_edge.provisioning.ca import CertificateAuthority
from water_edge.provisioning.identity import DeviceIdentity


def sign(tmp_path: Path, ca_dir: Path, name: str, cn: str, serial: str) -> int:
    csr = tmp_path / f"{name}.csr"
    csr.write_bytes(DeviceIdentity(tmp_path / name).make_csr(serial, cn, "north-plant"))
    return main(["ca", "sign", "--dir", str(ca_dir), str(csr), "-o", str(tmp_path / f"{name}.pem")])


def test_the_ca_refuses_a_held_or_reserved_name_in_any_letter_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.init(ca_dir, "Utility CA")
    assert sign(tmp_path, ca_dir, "gw01", "gw-01", "S1") == 0
    capsys.readouterr()

    assert sign(tmp_path, ca_dir, "upper", "GW-01", "S14") == 1
    said = capsys.readouterr().err
    assert "'GW-01' already has a valid certificate (as 'gw-01')" in said
    assert sign(tmp_path, ca_dir, "rename", "Gw-01", "S1") == 1  # gw-01's own device, renamed
    assert "device 'S1' already has a valid certificate as 'gw-01'" in capsys.readouterr().err

    for n, name in enumerate(
        ("Centre", "ENROLMENT-SERVICE", "CLAIM-x", "Claim", "Sparkplug-Host", "SPARKPLUG-HOST-b")
    ):
        assert sign(tmp_path, ca_dir, f"r{n}", name, f"R{n}") == 1, name
        assert f"{name!r} is reserved for central services" in capsys.readouterr().err

    held = [i.common_name for i in CertificateAuthority.open(ca_dir).issued()]
    assert held == ["gw-01"]
    assert sign(tmp_path, ca_dir, "renew", "gw-01", "S1") == 0  # a renewal, same name and serial
    assert sign(tmp_path, ca_dir, "other", "gw-02", "S14") == 0  # names that differ in more than case
