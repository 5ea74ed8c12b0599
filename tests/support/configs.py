"""A small agent config file for tests that check what the config loader or `check-config` makes of
a few devices and models: the gateway (its state under the test's directory) and a local broker,
then the tables the test is about."""

from __future__ import annotations

from pathlib import Path

HEAD = """schema_version = 1

[gateway]
site = "north"
id = "gw-01"
state_dir = "{state}"

[uplink]
host = "127.0.0.1"
"""


def config_file(directory: Path, tables: str) -> Path:
    """`directory/agent.toml`: the gateway and uplink, then `tables` (TOML text)."""
    path = directory / "agent.toml"
    path.write_text(HEAD.format(state=directory / "state") + tables)
    return path
