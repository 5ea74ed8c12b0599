"""The utility's own ACL blocks (`ca acl --extra`, `ca serve-enrolment --acl-extra`): an operator
console's block survives every write of the site-bound ACL, against a real Mosquitto run from the
shipped config, and a block that would give a gateway more than its site is refused, with nothing
written.

Before, the enrolment service rewrote the file after every certificate it issued and any block
added by hand was gone: the console's commands were refused, and sending them as `centre` closed
the centre's own connection (the same client id under use_username_as_clientid)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.support.pki import Pki, TlsClient
from water_edge.agent.cli import main
from water_edge.provisioning.broker_acl import BrokerAcl, extra_blocks
from water_edge.provisioning.enrol import enrol_with_claim
from water_edge.provisioning.enrol_service import Allowed, EnrolmentService
from water_edge.provisioning.errors import ProvisioningError
from water_edge.provisioning.identity import DeviceIdentity

NOT_AUTHORIZED = 0x87

CONSOLE = """\
# The operations console: sends signed commands, reads what the gateways answer.
user ops-console
topic write water/+/+/cmd/+
topic read water/+/+/events
topic read water/+/+/status
"""


def test_an_operator_consoles_block_survives_every_write_and_its_commands_reach_the_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(tmp_path)
    north = pki.device("north", "gw-01", "SER-N1", "north")
    console_cert, console_key = pki.client("ops-console")
    claim_cert, claim_key = pki.client("claim")
    svc_cert, svc_key = pki.client("enrolment-service")
    extra = tmp_path / "acl-extra"
    extra.write_text(CONSOLE)
    written = tmp_path / "acl"
    assert main(["ca", "acl", "--dir", str(pki.ca.dir), "-o", str(written), "--extra", str(extra)]) == 0
    said = capsys.readouterr()
    assert f"kept 1 user block(s) from {extra}: ops-console" in said.out
    assert "left out ops-console" not in said.err  # its block is the extra one
    assert written.read_text().endswith(CONSOLE)

    with pki.broker(acl=written.read_text()) as broker:
        acl = BrokerAcl(pki.broker_dir / "acl", reload_command=["kill", "-HUP", str(broker.pid)], extra=extra)
        service = EnrolmentService(pki.ca, allow={"SER-N9": Allowed("gw-09", "north")}, acl=acl)
        service.start(broker.host, broker.port, cert=svc_cert, key=svc_key, ca_file=pki.ca_file)
        try:
            assert service.wait_ready()
            new = DeviceIdentity(tmp_path / "gw09")
            enrol_with_claim(new, pki.claim(broker, claim_cert, claim_key), "SER-N9", "gw-09", "north")
        finally:
            service.stop()
        assert service.counts["issued"] == 1
        assert service.acl_failures == 0
        text = (pki.broker_dir / "acl").read_text()
        assert "user gw-09\n" in text  # the service wrote the file again (and the broker reloaded it)
        assert text.endswith(CONSOLE)

        centre = TlsClient(broker, pki.centre_cert, pki.centre_key, pki.ca_file)
        assert centre.subscribe("water/#").value == 1
        gw = TlsClient(broker, north.cert_file, north.key_file, pki.ca_file)
        gw9 = TlsClient(broker, new.cert_file, new.key_file, pki.ca_file)
        assert gw.subscribe("water/north/gw-01/cmd/#").value == 1
        assert gw9.subscribe("water/north/gw-09/cmd/#").value == 1
        console = TlsClient(broker, console_cert, console_key, pki.ca_file)
        for target in ("gw-01", "gw-09"):
            assert not console.publish(f"water/north/{target}/cmd/read_now", b"{}").is_failure
        gw.wait_message(lambda m: m[0] == "water/north/gw-01/cmd/read_now")
        gw9.wait_message(lambda m: m[0] == "water/north/gw-09/cmd/read_now")
        # The console writes only commands: it is not a gateway, and not the centre.
        assert console.publish("water/north/gw-01/plc1", b"{}").value == NOT_AUTHORIZED
        # Nor the bare `.../cmd` (docs walk 4, finding 3): a reader of water/+/+/+ takes it for
        # the gateway's data; the centre's generated block grants commands only too.
        for sender in (console, centre):
            assert sender.publish("water/north/gw-01/cmd", b"{}").value == NOT_AUTHORIZED
        # The centre was not disconnected by the console: it saw both commands on its connection.
        centre.wait_message(lambda m: m[0] == "water/north/gw-09/cmd/read_now")
        assert centre.disconnects == []
        for c in (centre, gw, gw9, console):
            c.close()


def test_a_block_that_would_give_a_gateway_more_than_its_site_is_refused_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(tmp_path)
    pki.device("north", "gw-01", "SER-N1", "north")
    issued = pki.ca.issued()
    extra = tmp_path / "acl-extra"
    out = tmp_path / "acl"
    extra.write_text("user gw-01\ntopic write water/south/gw-01/+\n")
    assert main(["ca", "acl", "--dir", str(pki.ca.dir), "-o", str(out), "--extra", str(extra)]) == 1
    assert "acl-extra:1: 'gw-01' is a gateway" in capsys.readouterr().err
    assert not out.exists()

    refusals = {
        "pattern write water/+/%u/#\n": "no pattern lines: a pattern applies to every client",
        "topic write water/#\nuser ops\n": "a topic line before any user line",
        "user centre\ntopic write spBv1.0/#\n": "the block of 'centre' is written by edge-agent ca acl",
        "user claim\ntopic write water/#\n": "the block of 'claim' is written by edge-agent ca acl",
        "user ops\ntopic read\n": "expected 'user NAME' or 'topic",
        "user ops\ntopic read water/#/x\n": "'water/#/x' is not an MQTT topic filter",
        "user ops\ntopic  read water/#\n": "words are separated by one space",
        "user ops\ntopic read water/#\tx\n": "only printable ASCII",
        "user ops\rtopic readwrite #\n": "only printable ASCII",
        "user ops\nuser ops\n": "a second block for user 'ops'",
        "user gw 01\n": "expected 'user NAME'",
        "user ops\nreadwrite #\n": "expected 'user NAME' or 'topic",
        "user ops\ntopic write water/+/+/cmd/#\n": "also lets 'ops' publish on the bare '.../cmd'",
        "user ops\ntopic water/north/+/cmd/#\n": "commands are one level below it: 'water/north/\\+/cmd/\\+'",
    }
    for text, reason in refusals.items():
        with pytest.raises(ProvisioningError, match=reason):
            extra_blocks(text, issued)
    reading = "user ops\ntopic read water/+/+/cmd/#\ntopic deny water/+/+/cmd/#\n"  # no write: fine
    assert extra_blocks(reading, issued) == ("ops",)
    assert extra_blocks(
        CONSOLE + "\n# a backup Ignition\nuser sparkplug-host-b\ntopic read spBv1.0/#\n", issued
    ) == (
        "ops-console",
        "sparkplug-host-b",
    )

    example = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "acl-extra.example"
    assert extra_blocks(example.read_text(), issued) == ("ops-console",)

    # A central-service certificate for a gateway's name does not make it one: any valid
    # certificate with a site or a device serial does.
    pki.client("gw-01")
    with pytest.raises(ProvisioningError, match="'gw-01' is a gateway"):
        extra_blocks("user gw-01\ntopic read water/#\n", pki.ca.issued())


def test_a_gateway_enrolled_under_an_extra_blocks_name_stops_the_writes_and_the_broker_keeps_its_file(
    tmp_path: Path,
) -> None:
    pki = Pki(tmp_path)
    extra = tmp_path / "acl-extra"
    extra.write_text("user gw-09\ntopic read water/#\n")  # written before gw-09 was a gateway
    out = tmp_path / "acl"
    service = EnrolmentService(pki.ca, allow={"SER-9": "gw-09"}, acl=BrokerAcl(out, extra=extra))
    assert service.write_acl()
    before = out.read_text()
    assert before.endswith("user gw-09\ntopic read water/#\n")
    csr = DeviceIdentity(tmp_path / "gw").make_csr("SER-9", "gw-09", "north")
    assert service.answer("claim", orjson.dumps({"csr": csr.decode()}))["status"] == "ok"
    assert service.acl_failures == 1  # refused, logged (enrol.acl_failed) and counted
    assert out.read_text() == before  # the broker keeps the file it had: gw-09 is not let in

    # The service refuses to start without the ACL its extra blocks would be kept in.
    args = ["ca", "serve-enrolment", "--dir", str(pki.ca.dir), "--host", "127.0.0.1"]
    args += ["--cert", "c.pem", "--key", "c.key", "--acl-extra", str(extra)]
    assert main(args) == 1
