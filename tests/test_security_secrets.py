"""Secrets come from files or the environment and never show up in logs or status output."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import pytest
import structlog
from pydantic import BaseModel

from water_edge.agent.config import load_config
from water_edge.agent.secrets import Secret, SecretRef, config_secret_refs, resolve_secret, secret_fields
from water_edge.agent.uplink.config import MqttConfig
from water_edge.core.errors import ConfigError
from water_edge.core.redact import RedactingProcessor, redact

PASSWORD = "Tr0ub4dor&3-pump-station"


def test_secret_references_resolve_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    assert resolve_secret(SecretRef(file=secret)) == PASSWORD
    monkeypatch.setenv("EDGE_TEST_SECRET", PASSWORD)
    assert resolve_secret(SecretRef(env="EDGE_TEST_SECRET")) == PASSWORD
    assert resolve_secret("literal") == "literal"

    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others") as exc:
        SecretRef(file=secret).resolve()
    assert PASSWORD not in str(exc.value)
    with pytest.raises(ConfigError, match="EDGE_MISSING_SECRET is not set"):
        SecretRef(env="EDGE_MISSING_SECRET").resolve()
    with pytest.raises(ValueError, match="exactly one"):
        SecretRef(file=secret, env="X")
    # A directory used to be "readable by others; chmod 640 it", an empty name "variable  is not set".
    with pytest.raises(ConfigError, match="is not a regular file"):
        SecretRef(file=tmp_path).resolve()
    with pytest.raises(ValueError, match="'env' names no environment variable"):
        SecretRef(env=" ")
    os.environ.pop("EDGE_TEST_SECRET", None)


def test_password_never_reaches_the_log(tmp_path: Path) -> None:
    out = io.StringIO()
    structlog.reset_defaults()  # another test may have left a level filter configured
    structlog.configure(
        processors=[RedactingProcessor([PASSWORD]), structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    try:
        cfg = MqttConfig(host="broker", username="gw", password=PASSWORD)
        log = structlog.get_logger("t")
        log.info("uplink.config", config=cfg.model_dump(mode="json"))
        log.warning("uplink.connect_failed", reason=f"auth failed for gw:{PASSWORD}@broker")
        log.info("x", nested={"list": [{"api_key": "abcd1234"}, PASSWORD]})
    finally:
        structlog.reset_defaults()
    text = out.getvalue()
    assert text.count("\n") == 3  # all three lines were logged ...
    assert PASSWORD not in text  # ... without the secret
    assert "abcd1234" not in text
    assert '"username": "gw"' in text  # and without masking what is not secret


def test_status_snapshot_is_redacted() -> None:
    snapshot = {"uplink": {"broker": "b:8883", "password": PASSWORD, "last_error": f"bad {PASSWORD}"}}
    clean = redact(snapshot, [PASSWORD])
    assert PASSWORD not in repr(clean)
    assert clean["uplink"]["broker"] == "b:8883"


# ------------------------------------------------------- finding 9: references work, values never shown

CONFIG = """schema_version = 1
[gateway]
site = "s1"
id = "gw1"
state_dir = "{state}"
[uplink]
host = "127.0.0.1"
port = {port}
username = "gw1"
password = {password}
reconnect_min_s = 0.1
reconnect_max_s = 0.5
[status]
socket = "{socket}"
"""


def write(tmp_path: Path, password: str, port: int = 1883) -> Path:
    import tempfile

    path = tmp_path / "agent.toml"
    socket = Path(tempfile.mkdtemp(prefix="sec-")) / "status.sock"
    path.write_text(CONFIG.format(state=tmp_path / "state", port=port, password=password, socket=socket))
    return path


def test_secret_references_are_accepted_by_the_config_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from water_edge.agent.cli import main
    from water_edge.agent.config import load_config

    secret = tmp_path / "mqtt.pass"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o640)  # root:edge-agent 0640 is how install.sh lays out /etc/edge-agent
    by_file = load_config(write(tmp_path, f'{{ file = "{secret}" }}'))
    assert by_file.uplink.password == SecretRef(file=secret)
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", PASSWORD)
    assert load_config(write(tmp_path, '{ env = "EDGE_MQTT_PASSWORD" }')).uplink.password == SecretRef(
        env="EDGE_MQTT_PASSWORD"
    )
    # A reference that cannot be resolved is a config error naming the key, checked up front.
    monkeypatch.delenv("EDGE_MQTT_PASSWORD")
    assert main(["check-config", "-c", str(write(tmp_path, '{ env = "EDGE_MQTT_PASSWORD" }'))]) == 2
    err = capsys.readouterr().err
    assert "uplink.password: environment variable EDGE_MQTT_PASSWORD is not set" in err
    secret.chmod(0o644)
    assert main(["check-config", "-c", str(write(tmp_path, f'{{ file = "{secret}" }}'))]) == 2
    assert "uplink.password:" in capsys.readouterr().err


@pytest.mark.parametrize("typo", ["1234567890", '["Tr0ub4dor&3"]', '{ fiel = "Tr0ub4dor" }'])
def test_check_config_never_prints_a_mistyped_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], typo: str
) -> None:
    from water_edge.agent.cli import main

    assert main(["check-config", "-c", str(write(tmp_path, typo))]) == 2
    out = capsys.readouterr()
    assert "uplink.password" in out.err
    for fragment in ("1234567890", "Tr0ub4dor"):
        assert fragment not in out.err + out.out


def test_a_password_by_reference_logs_in_and_never_shows(tmp_path: Path) -> None:
    from tests.support.agent_proc import running_agent
    from tests.support.broker import Mosquitto

    secret = tmp_path / "mqtt.pass"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    with Mosquitto(users={"gw1": PASSWORD}) as broker:
        config = write(tmp_path, f'{{ file = "{secret}" }}', broker.port)
        with running_agent(config) as agent:
            status = agent.wait_status(lambda s: s["uplink"]["state"] == "online")
            assert agent.stop() == 0
            log = agent.log()
    assert PASSWORD not in repr(status)
    assert PASSWORD not in log


async def test_status_cuts_out_a_secret_as_it_is_now_without_walking_the_config_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config is walked for its secrets once (77 ms at 10,000 tags, per status request before),
    but each one is read again per request: a password file rotated since start is cut out too."""
    from tests.support.testing import write_agent_config
    from water_edge.agent import runtime
    from water_edge.agent.config import load_config
    from water_edge.buffer.async_outbox import AsyncOutbox

    secret = tmp_path / "mqtt.pass"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    config = load_config(
        write_agent_config(tmp_path, uplink={"username": "gw1", "password": {"file": str(secret)}})
    )
    walks = 0
    walk = config_secret_refs

    def counting_walk(config: object) -> list[Secret]:
        nonlocal walks
        walks += 1
        return walk(config)

    monkeypatch.setattr(runtime, "config_secret_refs", counting_walk)
    async with await AsyncOutbox.open(tmp_path / "o.db", max_bytes=1 << 26) as box:
        agent = runtime.Agent(config, box)
        said = _Said(f"broker refused user gw1 / {PASSWORD}")
        monkeypatch.setattr(agent, "status_document", lambda: said)
        assert agent.snapshot() == {"uplink": {"last_error": "broker refused user gw1 / ***"}}
        rotated = "N3w-rotated-secret"
        secret.write_text(rotated + "\n")
        said.error = f"broker refused user gw1 / {rotated}"
        assert agent.snapshot() == {"uplink": {"last_error": "broker refused user gw1 / ***"}}
        agent.snapshot()
    assert walks == 1


class _Said:
    """A status document whose uplink error carries a secret, as a library's error text might."""

    def __init__(self, error: str) -> None:
        self.error = error

    def to_json(self) -> dict[str, object]:
        return {"uplink": {"last_error": self.error}}


ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CONFIGS = [
    *sorted((ROOT / "deploy" / "samples").glob("*.toml")),
    ROOT / "deploy" / "config.example.toml",
]


def _every_field(model: type[BaseModel]) -> Iterable[str]:
    """The walk as it was before fields that cannot hold a secret were skipped: every field."""
    return model.model_fields


def test_the_secret_walk_skips_only_fields_that_cannot_hold_a_secret() -> None:
    """Meter keys (`key = { file }`, not named password) sit two models deep in M-Bus and wireless
    M-Bus devices: the walk that skips tag-like models by their types must still find them."""
    found = 0
    for sample in SAMPLE_CONFIGS:
        config = load_config(sample)
        for model in [config.uplink, config.security, *config.devices]:
            walked = list(secret_fields(model))
            assert walked == list(secret_fields(model, _every_field)), sample.name
            found += len(walked)
    assert found >= 3  # the samples' meter keys: the comparison compares something


def test_a_password_written_in_the_proxy_url_is_masked_like_any_password() -> None:
    """`[uplink] proxy = "http://user:password@host:port"`: the password is a secret wherever it
    would appear (the log, status), as written and percent-decoded; the rest of the URL is not."""
    from water_edge.agent.secrets import secret_fields

    cfg = MqttConfig(host="broker", proxy="http://gw17:s%40cret-Proxy9@proxy.corp:3128")
    secrets = list(secret_fields(cfg))
    assert secrets == ["s%40cret-Proxy9", "s@cret-Proxy9"]
    line = "connect via http://gw17:s%40cret-Proxy9@proxy.corp:3128 refused for gw17:s@cret-Proxy9"
    clean = redact({"uplink": {"last_error": line}}, [str(s) for s in secrets])
    assert "cret-Proxy9" not in repr(clean)
    assert "proxy.corp:3128" in repr(clean)
    assert list(secret_fields(MqttConfig(host="broker", proxy="http://proxy.corp:3128"))) == []
