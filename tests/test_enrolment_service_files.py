"""The enrolment service's files as an installer uses them: a serial added to the allow-list while
`edge-agent ca serve-enrolment` runs (security.md: "allow-list serials just before installation")
enrols without a restart, and a mistyped `--acl` directory stops the service instead of being
created and reported as written."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.pki import Pki, ShippedMosquitto
from tests.support.testing import AGENT_SITE
from water_edge.agent.cli import main
from water_edge.provisioning.enrol import enrol_with_claim
from water_edge.provisioning.errors import ProvisioningError
from water_edge.provisioning.identity import DeviceIdentity


@contextmanager
def _service(pki: Pki, broker: ShippedMosquitto, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    cert, key = pki.client("enrolment-service")
    args = ["ca", "serve-enrolment", "--dir", str(pki.ca.dir), "--host", broker.host]
    args += ["--port", str(broker.port), "--cert", str(cert), "--key", str(key), *extra]
    proc = subprocess.Popen(
        [sys.executable, "-m", "water_edge.agent.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def _enrol(pki: Pki, broker: ShippedMosquitto, directory: Path, serial: str, gateway: str) -> str:
    """'ok', or the service's refusal; asks again while the service is not up yet (no answer)."""
    claim_cert, claim_key = pki.client("claim")
    claim = pki.claim(broker, claim_cert, claim_key, timeout_s=2)
    deadline = time.monotonic() + 20
    while True:
        try:
            enrol_with_claim(DeviceIdentity(directory), claim, serial, gateway, AGENT_SITE)
        except ProvisioningError as exc:
            if "no answer" in str(exc) and time.monotonic() < deadline:
                continue
            return str(exc)
        return "ok"


@pytest.mark.slow
def test_a_serial_added_to_the_allow_list_while_the_service_runs_enrols(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    serials = tmp_path / "serials.txt"
    serials.write_text("PLANT7-GW01 gw-01\n")
    with pki.broker() as broker, _service(pki, broker, "--allow", str(serials)):
        assert _enrol(pki, broker, tmp_path / "gw-01", "PLANT7-GW01", "gw-01") == "ok"
        assert "not on the enrolment allow-list" in _enrol(
            pki, broker, tmp_path / "gw-04", "PLANT7-GW04", "gw-04"
        )
        # The installer lists the next gateway just before installing it: no restart.
        with serials.open("a") as f:
            f.write(f"PLANT7-GW04 gw-04 {AGENT_SITE}\n")
        assert _enrol(pki, broker, tmp_path / "gw-04b", "PLANT7-GW04", "gw-04") == "ok"
        # Taken off the list again (an editor writes a new file): refused again.
        replaced = tmp_path / "serials.new"
        replaced.write_text("PLANT7-GW01 gw-01\n")
        os.replace(replaced, serials)
        assert "not on the enrolment allow-list" in _enrol(
            pki, broker, tmp_path / "gw-04c", "PLANT7-GW04", "gw-04"
        )
        # Half-edited, with a bad line: refused (never guessed at), the other lines not shown.
        serials.write_text("PLANT7-GW01 gw-01\nPLANT7-GW06 gw-06 north extra\n")
        why = _enrol(pki, broker, tmp_path / "gw-06", "PLANT7-GW06", "gw-06")
        assert "allow-list cannot be read" in why
        assert "PLANT7-GW01" not in why
        serials.write_text("PLANT7-GW01 gw-01\nPLANT7-GW06 gw-06\n")
        assert _enrol(pki, broker, tmp_path / "gw-06b", "PLANT7-GW06", "gw-06") == "ok"


def test_a_mistyped_acl_directory_stops_the_service_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(tmp_path)
    cert, key = pki.client("enrolment-service")
    missing = tmp_path / "mosquito" / "edge-agent"
    args = ["ca", "serve-enrolment", "--dir", str(pki.ca.dir), "--host", "127.0.0.1", "--port", "29517"]
    args += ["--cert", str(cert), "--key", str(key), "--acl", str(missing / "acl")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "does not exist" in err
    assert not (tmp_path / "mosquito").exists()
