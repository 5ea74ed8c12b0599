"""The exit codes and config default every `edge-agent` command shares (docs/operations.md)."""

from __future__ import annotations

import os
from typing import Final

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2  # bad arguments or a config that does not load
EXIT_INTERRUPTED: Final = 130  # Ctrl-C, as a shell reports a command ended by SIGINT
# `status`, as monitoring plugins count: ok, warning, critical.
EXIT_DEGRADED: Final = 1
EXIT_NOT_RUNNING: Final = 2
DEFAULT_CONFIG: Final = os.environ.get("EDGE_AGENT_CONFIG", "/etc/edge-agent/config.toml")
