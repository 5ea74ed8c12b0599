"""The enrolment service's command-line options, light to import (the CLI registers them at start)."""

from __future__ import annotations

import argparse
from pathlib import Path

from water_edge.core.cli_numbers import number, whole


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """The service's options, shared by `edge-agent ca serve-enrolment` and this module's `main`."""
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=whole(1, 65535), default=8883)
    parser.add_argument("--cert", type=Path, required=True, help="the service's client certificate")
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--broker-ca", type=Path, help="CA of the broker's certificate (default: this CA)")
    parser.add_argument("--topic-prefix", default="enrol")
    parser.add_argument("--allow", type=Path, help="file of device serials allowed to enrol, one a line")
    parser.add_argument("--days", type=whole(1), default=365)
    parser.add_argument(
        "--renew-after",
        type=number(0, 1),
        default=0.5,
        help="a gateway's renewal is signed once its certificate has lived this fraction of its "
        "lifetime (default 0.5; the agent asks at 0.67)",
    )
