"""Secrets come from files or the environment and never show up in logs or status output."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import structlog

from water_edge.agent.secrets import SecretRef, resolve_secret
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
