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
    parser.add_argument(
        "--allow", type=Path, help="file of 'SERIAL GATEWAY_ID [SITE]' lines: the devices allowed to enrol"
    )
    parser.add_argument("--days", type=whole(1), default=365)
    parser.add_argument(
        "--renew-after",
        type=number(0, 1),
        default=0.5,
        help="a gateway's renewal is signed once its certificate has lived this fraction of its "
        "lifetime (default 0.5; the agent asks at 0.67)",
    )
    parser.add_argument(
        "--acl",
        type=Path,
        help="keep this site-bound Mosquitto ACL: written at start and after every certificate issued",
    )
    parser.add_argument("--acl-reload", help="run after each ACL write, e.g. 'systemctl reload mosquitto'")
    parser.add_argument(
        "--acl-extra",
        type=Path,
        help="the utility's own user blocks (an operator console...), checked and appended at every write",
    )
    parser.add_argument("--acl-prefix", default="water", help="the gateways' [uplink] prefix (ACL)")
    parser.add_argument("--acl-host-id", default="scada", help="the Sparkplug primary_host_id (ACL)")
