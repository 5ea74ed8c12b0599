"""The options of the commands that read a gateway's own history (`models score ... --sensor /
--pump / --machine`, `models calibrate leak --sensor`), light enough to register when the CLI starts
(no pydantic, no numpy)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def config_path(given: Path | None) -> Path:
    """`-c FILE`, else `$EDGE_AGENT_CONFIG`, else the installed config."""
    return given or Path(os.environ.get("EDGE_AGENT_CONFIG", "/etc/edge-agent/config.toml"))


def add_history_arguments(parser: Any, needs: str = "", *, to_default: str | None = "now") -> None:
    """`--from` / `--to` (a stretch of what the gateway stored), `-c` and `--state-dir`, for the
    commands that read a gateway's own history (`needs`: the option they go with, for the help;
    `to_default`: what a missing `--to` means, None when the command needs one)."""
    with_ = f"with {needs}: " if needs else ""
    end = "required" if to_default is None else f"default: {to_default}"
    parser.add_argument(
        "--from", dest="from_ts", default=None, help=f"{with_}ISO 8601 (UTC if no zone) or epoch s"
    )
    parser.add_argument("--to", dest="to_ts", default=None, help=f"{with_}end of the stretch ({end})")
    parser.add_argument(
        "-c", "--config", type=Path, default=None, help=f"{with_}agent config (default $EDGE_AGENT_CONFIG)"
    )
    parser.add_argument("--state-dir", type=Path, default=None, help=f"{with_}override gateway.state_dir")
