"""The site-bound broker ACL (`edge-agent ca acl --dir`), against a real Mosquitto run from the
shipped config: a gateway publishes, and is an Edge Node, only in the site its certificate names;
the enrolment service keeps the file current and the broker reloads it, so a gateway enrolled over
MQTT is allowed at once; a gateway's key cannot move it to another site at renewal, nor a claim
holder enrol it into a site the allow-list does not name."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.pki import SHIPPED_ACL, Pki, TlsClient
from tests.support.testing import wait_until
from water_edge.agent.cli import main
from water_edge.provisioning.broker_acl import BrokerAcl, render
from water_edge.provisioning.enrol import enrol_with_claim
from water_edge.provisioning.enrol_service import Allowed, EnrolmentService, load_allow_list
from water_edge.provisioning.errors import ProvisioningError
from water_edge.provisioning.identity import DeviceIdentity

NOT_AUTHORIZED = 0x87


def tls_client(pki: Pki, broker: Any, identity: DeviceIdentity) -> TlsClient:
    return TlsClient(broker, identity.cert_file, identity.key_file, pki.ca_file)


def refused(c: TlsClient, topic: str) -> bool:
    ack = c.publish(topic, b"{}")
    assert ack is not None, f"the connection closed publishing {topic}"
    return bool(ack.value == NOT_AUTHORIZED)


def site_bound_acl(pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    out = tmp_path / "acl"
    assert main(["ca", "acl", "--dir", str(pki.ca.dir), "-o", str(out)]) == 0
    said = capsys.readouterr()
    assert "2 gateway(s) bound to their id and site" in said.out
    # The broker's and the centre's certificates name no site: reported, not bound.
    assert "left out broker: no site (OU)" in said.err
    return out.read_text()


def test_the_shipped_acl_is_the_id_bound_one_the_cli_writes(tmp_path: Path) -> None:
    out = tmp_path / "acl"
    assert main(["ca", "acl", "--id-bound", "-o", str(out)]) == 0
    assert out.read_text() == SHIPPED_ACL.read_text() == render()
    custom = render(prefix="utility/water", host_id="ignition-1")
    assert "pattern write utility/water/+/%u/+" in custom
    assert "topic write spBv1.0/STATE/ignition-1" in custom
    assert main(["ca", "acl", "--id-bound", "-o", str(out), "--prefix", "water/#"]) == 1


def test_a_gateway_publishes_only_in_the_site_its_certificate_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(tmp_path)
    north = pki.device("north", "gw-01", "SER-N1", "north")
    south = pki.device("south", "gw-02", "SER-S2", "south")
    acl = site_bound_acl(pki, tmp_path, capsys)

    # What the shipped, id-bound ACL allows: a gateway under its own id in any site.
    with pki.broker() as broker:
        gw = tls_client(pki, broker, north)
        assert not refused(gw, "water/south/gw-01/plc1")
        gw.close()

    with pki.broker(acl=acl) as broker:
        gw, other = tls_client(pki, broker, north), tls_client(pki, broker, south)
        assert gw.subscribe("water/+/gw-01/cmd/#").value == 1
        assert not refused(gw, "water/north/gw-01/plc1")
        assert not refused(gw, "water/north/gw-01/status")
        assert refused(gw, "water/south/gw-01/plc1")  # its own id, another site
        assert refused(gw, "water/north/gw-02/plc1")  # another gateway
        assert not refused(gw, "spBv1.0/north/NBIRTH/gw-01")
        assert not refused(gw, "spBv1.0/north/DDATA/gw-01/plc1")
        assert refused(gw, "spBv1.0/south/NBIRTH/gw-01")  # an Edge Node in another group
        assert refused(gw, "spBv1.0/STATE/scada")  # only the host says it is online
        assert not refused(other, "water/south/gw-02/plc1")
        assert refused(other, "water/north/gw-02/plc1")

        # Commands reach a gateway only in its own site.
        centre = TlsClient(broker, pki.centre_cert, pki.centre_key, pki.ca_file)
        assert not centre.publish("water/south/gw-01/cmd/restart", b"{}").is_failure
        assert not centre.publish("water/north/gw-01/cmd/read_now", b"{}").is_failure
        assert centre.publish("water/north/gw-01/cmd", b"{}").value == NOT_AUTHORIZED  # a data topic
        gw.wait_message(lambda m: m[0] == "water/north/gw-01/cmd/read_now")
        for c in (gw, other, centre):
            c.close()
    assert {topic for topic, _ in gw.messages} == {"water/north/gw-01/cmd/read_now"}


def test_the_enrolment_service_keeps_the_acl_and_the_broker_reloads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(tmp_path)
    pki.device("north", "gw-01", "SER-N1", "north")
    pki.device("south", "gw-02", "SER-S2", "south")
    claim_cert, claim_key = pki.client("claim")
    svc_cert, svc_key = pki.client("enrolment-service")
    acl_file = pki.broker_dir / "acl"
    with pki.broker(acl=site_bound_acl(pki, tmp_path, capsys)) as broker:
        acl = BrokerAcl(acl_file, reload_command=["kill", "-HUP", str(broker.pid)])
        service = EnrolmentService(
            pki.ca, allow={"SER-N9": Allowed("gw-09", "north"), "SER-S8": Allowed("gw-08", "south")}, acl=acl
        )
        assert service.write_acl()
        service.start(broker.host, broker.port, cert=svc_cert, key=svc_key, ca_file=pki.ca_file)
        try:
            assert service.wait_ready()
            claim = pki.claim(broker, claim_cert, claim_key)
            new = DeviceIdentity(tmp_path / "gw09")
            enrol_with_claim(new, claim, "SER-N9", "gw-09", "north")
            # A claim holder cannot choose the site the allow-list names for a serial.
            with pytest.raises(ProvisioningError, match="the CSR names site 'north', the allow-list 'south'"):
                enrol_with_claim(DeviceIdentity(tmp_path / "gw08"), claim, "SER-S8", "gw-08", "north")
        finally:
            service.stop()
        assert service.counts == {"issued": 1, "refused": 1, "dropped": 0, "failed": 0}
        assert service.acl_failures == 0
        assert "user gw-09\ntopic write water/north/gw-09/+\n" in acl_file.read_text()

        # The broker reloaded the file: the gateway enrolled a moment ago may publish, in its site.
        # SIGHUP returns at once and Mosquitto reloads when its loop comes round to it.
        gw = tls_client(pki, broker, new)
        wait_until(lambda: not refused(gw, "water/north/gw-09/plc1"), 10, "the broker's reload of the ACL")
        assert refused(gw, "water/south/gw-09/plc1")
        gw.close()


def test_a_failed_reload_is_counted_and_the_certificate_still_answered(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    acl = BrokerAcl(tmp_path / "acl", reload_command=["false"])
    service = EnrolmentService(pki.ca, allow={"SER-1": "gw-01"}, acl=acl)
    csr = DeviceIdentity(tmp_path / "gw").make_csr("SER-1", "gw-01", "north")
    reply = service.answer("claim", orjson.dumps({"csr": csr.decode()}))
    assert reply["status"] == "ok"
    assert service.acl_failures == 1
    assert "user gw-01\n" in (tmp_path / "acl").read_text()  # written; only the reload failed
    with pytest.raises(ProvisioningError, match="the reload command 'false' exited with 1"):
        acl.write(pki.ca)


def test_a_renewal_keeps_the_site(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pki.device("gw", "gw-01", "SER-1", "north")
    service = EnrolmentService(pki.ca, renew_after=0)

    def renew(name: str, site: str) -> dict[str, Any]:
        csr = DeviceIdentity(tmp_path / name).make_csr("SER-1", "gw-01", site)
        reply: dict[str, Any] = service.answer("gw-01", orjson.dumps({"csr": csr.decode()}))
        return reply

    moved = renew("moved", "south")
    assert moved["status"] == "refused"
    assert moved["reason"] == (
        "the CSR names site 'south', 'gw-01''s certificate 'north'; a gateway moves to another "
        "site by offline re-enrolment (edge-agent ca sign)"
    )
    assert renew("same", "north")["status"] == "ok"


def test_the_allow_list_takes_an_optional_site(tmp_path: Path) -> None:
    path = tmp_path / "allow"
    path.write_text("SER-1 gw-01 north  # pump station 4\nSER-2 gw-02\n\n")
    assert load_allow_list(path) == {"SER-1": Allowed("gw-01", "north"), "SER-2": Allowed("gw-02", None)}
    path.write_text("SER-1 gw-01 north east\n")
    with pytest.raises(ProvisioningError, match=r"allow:1: expected 'SERIAL GATEWAY_ID \[SITE\]'"):
        load_allow_list(path)
    path.write_text("SER-1 gw-01 nörth\n")
    with pytest.raises(ProvisioningError, match="allow:1: site 'nörth' is not a name"):
        load_allow_list(path)


def test_the_ca_signs_only_names_the_agent_accepts_as_gateway_id_and_site(tmp_path: Path) -> None:
    # The CN and OU are written into a site-bound ACL and into topics: a CSR cannot bring a space,
    # a wildcard or a new line into either.
    pki = Pki(tmp_path)
    cases = [("gw 01", "north", "common name 'gw 01'"), ("gw-01", "north\ntopic readwrite #", "site (OU)")]
    for i, (cn, site, what) in enumerate([*cases, ("gw+1", "north", "common name 'gw+1'")]):
        csr = DeviceIdentity(tmp_path / f"d{i}").make_csr(f"SER-{i}", cn, site)
        with pytest.raises(ProvisioningError, match=f"^{re.escape(what)}.* is not a name of letters, digits"):
            pki.ca.sign_csr(csr)
    assert pki.ca.sign_csr(DeviceIdentity(tmp_path / "ok").make_csr("SER-OK", "gw-01", "north.plant_2"))


def test_gateways_enrolling_at_once_are_answered_while_the_broker_reloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rollout powers up gateways together, and all of them enrol with the one claim certificate:
    the broker keeps one connection per identity, so each new claimer takes the connection of the
    one before, which reconnects and asks again. The same key asking again gets its certificate
    again (it was refused as 'already enrolled', and that refusal, naming its serial, was taken as
    its answer). And a broker's reload may take its time (up to 30 s): answered on the MQTT
    client's own thread, one slow reload stopped the service from receiving anything - and from
    answering the broker's keep-alive - until it returned; requests now wait their turn."""
    pki = Pki(tmp_path)
    pki.device("north", "gw-01", "SER-N1", "north")
    pki.device("south", "gw-02", "SER-S2", "south")
    claim_cert, claim_key = pki.client("claim")
    svc_cert, svc_key = pki.client("enrolment-service")
    gate = tmp_path / "reload-may-finish"
    with pki.broker(acl=site_bound_acl(pki, tmp_path, capsys)) as broker:
        reload = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; kill -HUP {broker.pid}"]
        acl = BrokerAcl(pki.broker_dir / "acl", reload_command=reload)
        service = EnrolmentService(
            pki.ca, allow={"SER-N9": Allowed("gw-09", "north"), "SER-S8": Allowed("gw-08", "south")}, acl=acl
        )
        # No reload right after the broker started: a SIGHUP before Mosquitto set its handler up
        # ends it (the broker's ACL is the register's already).
        service.start(broker.host, broker.port, cert=svc_cert, key=svc_key, ca_file=pki.ca_file)
        errors: list[BaseException] = []

        def enrol(name: str, serial: str, site: str) -> None:
            try:
                enrol_with_claim(DeviceIdentity(tmp_path / name), claim, serial, name, site)
            except BaseException as exc:  # reported by the test below
                errors.append(exc)

        try:
            assert service.wait_ready()
            claim = pki.claim(broker, claim_cert, claim_key, timeout_s=30)
            first = threading.Thread(target=enrol, args=("gw-09", "SER-N9", "north"))
            first.start()
            deadline = time.monotonic() + 20
            while service.counts["issued"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert service.counts["issued"] == 1  # signed; its reload now waits on the gate
            second = threading.Thread(target=enrol, args=("gw-08", "SER-S8", "south"))
            second.start()
            while service.waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert service.waiting >= 1, "no request was received during the reload"
            assert first.is_alive()  # its answer goes out only after the reload
            gate.touch()
            first.join(40)
            second.join(40)
        finally:
            gate.touch()
            service.stop()
        assert errors == []
        assert service.counts["refused"] == service.counts["failed"] == service.counts["dropped"] == 0
        enrolled = [i.common_name for i in pki.ca.issued() if i.device_serial in ("SER-N9", "SER-S8")]
        assert sorted(n or "" for n in enrolled) == ["gw-08", "gw-09"]  # one each, however often they asked
        assert service.acl_failures == 0
        for name, site in (("gw-09", "north"), ("gw-08", "south")):
            gw = tls_client(pki, broker, DeviceIdentity(tmp_path / name))
            assert not refused(gw, f"water/{site}/{name}/plc1")
            gw.close()
