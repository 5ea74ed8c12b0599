"""The ingest when the broker lets it subscribe but not read: said, never silent (docs/fleet.md).

Mosquitto 2.0's `acl_file` (the shipped broker, deploy/mosquitto/) grants every SUBSCRIBE, MQTT 5
and 3.1.1 alike (`Granted QoS 1`), and then withholds each message the ACL gives no read on: a
consumer whose certificate's CN has no `topic read water/#` received nothing and said nothing.
A broker that checks subscriptions (Mosquitto's dynamic-security plugin, EMQX, HiveMQ, RabbitMQ)
answers SUBACK `Not authorized (0x87)` over MQTT 5 and `0x80` over 3.1.1, which the ingest ignored.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto
from tests.support.centre import IngestProcess, ingest_process
from tests.support.pki import SHIPPED_ACL, Pki
from tests.support.testing import wait_until

pytestmark = pytest.mark.slow


def _lines(ingest: IngestProcess, event: str) -> list[str]:
    return [line for line in ingest.log().splitlines() if event in line]


def _wait_for(ingest: IngestProcess, event: str, count: int = 1) -> list[str]:
    def seen() -> bool:
        if ingest.process is not None and ingest.process.poll() is not None:
            raise RuntimeError(f"ingest exited ({ingest.process.returncode}):\n{ingest.log()}")
        return len(_lines(ingest, event)) >= count

    wait_until(seen, 30, what=lambda: f"{count} x {event}\n{ingest.log()[-3000:]}")
    return _lines(ingest, event)


def test_the_shipped_broker_grants_a_subscription_without_read_and_the_ingest_warns(
    centre_db: str, tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki")
    cert, key = pki.client("ingest-9")  # a consumer nobody added to the ACL
    with pki.broker(SHIPPED_ACL.read_text()) as broker:
        ingest = ingest_process(
            tmp_path, "ingest-9", centre_db, [f"mqtts://localhost:{broker.port}"],
            "--ca-file", str(pki.ca_file), "--cert-file", str(cert), "--key-file", str(key),
            "--silent-warn-s", "1",
        ).start()  # fmt: skip
        try:
            ingest.wait_subscribed()
            (line,) = _wait_for(ingest, "ingest.nothing_received")  # once per connection
        finally:
            ingest.stop()
    assert "topic=$share/ingest/water/+/+/+" in line
    assert "its ACL gives this client no read on the filter" in line
    assert "ingest.subscribe_refused" not in ingest.log()  # this broker does not tell


def _dynsec_broker(tmp_path: Path) -> Mosquitto:
    """A Mosquitto whose dynamic-security plugin checks subscriptions: user `ingest` (password
    `pw`) has no role, and the plugin's default denies every SUBSCRIBE."""
    plugin = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
    if not plugin.exists() or shutil.which("mosquitto_ctrl") is None:
        pytest.skip("Mosquitto's dynamic-security plugin (the mosquitto package) is not installed")
    config = tmp_path / "dynsec.json"
    subprocess.run(
        ["mosquitto_ctrl", "dynsec", "init", str(config), "admin", "pw"], check=True, capture_output=True
    )
    data = json.loads(config.read_text())
    (admin,) = data["clients"]
    data["clients"].append({**admin, "username": "ingest", "roles": []})  # admin's password hash, no role
    config.write_text(json.dumps(data))
    extra = f"plugin {plugin}\nplugin_opt_config_file {config}\n"
    return Mosquitto(extra_config=extra)


@pytest.mark.parametrize(("protocol", "code"), [("5", "Not authorized (0x87)"), ("3.1.1", "(0x80)")])
def test_a_subscription_the_broker_refuses_is_an_error_naming_the_filter_and_retried_backing_off(
    centre_db: str, tmp_path: Path, protocol: str, code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_CENTRE_MQTT_USER", "ingest")
    monkeypatch.setenv("EDGE_CENTRE_MQTT_PASSWORD", "pw")
    with _dynsec_broker(tmp_path) as broker:
        ingest = ingest_process(
            tmp_path, "ingest-1", centre_db, [f"mqtt://127.0.0.1:{broker.port}"], "--protocol", protocol
        ).start()
        try:
            refused = _wait_for(ingest, "ingest.subscribe_refused", 3)
            later = _lines(ingest, "ingest.resubscribe_later")
        finally:
            ingest.stop()
    assert all("topic=$share/ingest/water/+/+/+" in line and code in line for line in refused), refused
    assert all("error" in line.split("ingest.subscribe_refused")[0] for line in refused), refused  # the level
    # Backing off: 0.5 s, then 1 s, 2 s ... between the attempts, not a resubscribe at once.
    delays = [float(line.split("retry_in_s=")[1].split()[0]) for line in later]
    assert delays[:2] == [0.5, 1.0], later
