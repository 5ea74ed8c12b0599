"""The operator's command tool in a fleet of mixed releases (docs/fleet.md, "Mixed releases").

A gateway of a release before 2026-12-01 (walked: fff311c) knows neither `update`, `update_chunk`,
`leak_calibration` nor `machine_sound_calibration`: its config refuses them in an operator's
`commands`, and it answers each such command `refused`, `not_authorised: key 'ops' may not send
'update'`, with `id` and `type` null: the words of a key without the right, which no change of
rights can mend. `edge-agent ca sign-command` said nothing of it; it now says so on stderr, and
its stdout stays the envelope alone, for the pipe to `mosquitto_pub`.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.support.cli import edge_agent
from water_edge.agent.remote.config import COMMAND_TYPES


@pytest.fixture
def operator_key(tmp_path: Path) -> Path:
    key = tmp_path / "ops.pem"
    assert edge_agent("ca", "operator-key", "--out", str(key)).returncode == 0
    return key


def sign(key: Path, command_type: str) -> tuple[dict[str, object], str]:
    run = edge_agent(
        "ca", "sign-command", "--key", str(key), "--key-id", "ops", "--type", command_type,
        "--target", "north/gw-07",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    envelope = orjson.loads(run.stdout)  # nothing else on stdout: it is piped to the broker
    assert isinstance(envelope, dict)
    return envelope, run.stderr


@pytest.mark.parametrize(
    "command_type", ["update", "update_chunk", "leak_calibration", "machine_sound_calibration"]
)
def test_signing_a_command_older_releases_do_not_know_says_what_such_a_gateway_answers(
    operator_key: Path, command_type: str
) -> None:
    envelope, stderr = sign(operator_key, command_type)
    assert envelope["type"] == command_type
    assert f"not_authorised: key '...' may not send '{command_type}'" in stderr
    assert "an earlier release" in stderr
    assert "it cannot be granted there" in stderr


def test_a_command_every_release_knows_is_signed_without_a_word(operator_key: Path) -> None:
    for command_type in ("read_now", "config_update", "model_update", "pump_calibration", "restart", "write"):
        envelope, stderr = sign(operator_key, command_type)
        assert envelope["type"] == command_type
        assert stderr == ""


def test_every_command_this_release_knows_is_either_in_every_release_or_dated() -> None:
    # A command added later must be added to SINCE, or the tool says nothing of old gateways.
    from water_edge.provisioning.sign_command import SINCE

    first = {"read_now", "config_update", "model_update", "pump_calibration", "restart", "write"}
    assert set(COMMAND_TYPES) == first | set(SINCE)
