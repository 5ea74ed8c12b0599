"""Gateway cards whose pump calibrates in seconds (`FAST_CALIBRATING_PUMP` on a firmware-sim
plant), as the tests of carrying learnt state to a new card make them, and the pump's health in a
status document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.testing import FAST_CALIBRATING_PUMP, agent_config


def pump1_health(status: dict[str, Any]) -> dict[str, Any]:
    """`pump1`'s health in the agent's status (empty until the pump processor reports it)."""
    pump = next(p for p in status["processors"] if p["name"] == "pump_anomaly")
    health: dict[str, Any] = pump["health"].get("pumps", {}).get("pump1", {})
    return health


def pump_card(
    root: Path, name: str, devices: str, broker_port: int, *, security: str | None = None, extra: str = ""
) -> Path:
    """The config of a card `root/name` (its state, socket and config inside) polling `devices`."""
    directory = root / name
    directory.mkdir()
    config = directory / "agent.toml"
    config.write_text(
        agent_config(
            directory / "state",
            broker_port=broker_port,
            status_socket=directory / "status.sock",
            devices=devices,
            models=FAST_CALIBRATING_PUMP,
            security=security,
            extra=extra,
        )
    )
    return config
