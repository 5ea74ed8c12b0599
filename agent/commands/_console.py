"""What the operator console's commands share: a signed command's arguments (`ca sign-command`,
`ca send-command`), the broker connection's (`ca send-command`, `ca send-state-restore`) and the
`Broker` they make."""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path
from typing import TYPE_CHECKING

from water_edge.core.cli_numbers import whole

if TYPE_CHECKING:
    from water_edge.agent.operator_link import Broker


def add_command_arguments(p: argparse.ArgumentParser) -> None:
    """What a signed command is made of (`ca sign-command`, `ca send-command`)."""
    p.add_argument("--key", type=Path, required=True, help="operator private key (PEM)")
    p.add_argument("--key-id", required=True, help="the operator name the gateway config trusts")
    p.add_argument("--type", required=True, dest="command_type")
    p.add_argument("--target", required=True, help="SITE/GATEWAY")
    p.add_argument("--args", default="{}", help="JSON object of arguments")
    p.add_argument("--args-file", type=Path, help="read a string argument from a file: NAME=PATH")
    p.add_argument("--ttl", type=whole(1), default=300, help="seconds until it expires")


def add_broker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, help="the broker's host (the gateway's [uplink] broker)")
    p.add_argument("--prefix", default="water", help="the gateway's [uplink] prefix (default water)")
    p.add_argument(
        "--sparkplug",
        metavar="GROUP/NODE",
        help="the gateway speaks Sparkplug B: its [uplink.sparkplug] group_id/edge_node_id, whose NDATA "
        "carries its answers (default: its JSON events topic)",
    )
    p.add_argument("--port", type=whole(1, 65535), help="default 8883 with TLS, 1883 without")
    p.add_argument("--cafile", type=Path, help="CA of the broker's certificate: TLS (without it: plain MQTT)")
    p.add_argument("--cert", type=Path, help="this console's client certificate (PEM)")
    p.add_argument("--client-key", type=Path, help="its private key (PEM)")
    p.add_argument("--username", help="MQTT user name, when the broker wants one")
    p.add_argument(
        "--password-env", help="the environment variable holding the MQTT password (asked for when not set)"
    )


def broker_from(args: argparse.Namespace) -> Broker:
    """The broker connection the arguments describe (the password asked for when not given)."""
    from water_edge.agent.operator_link import Broker

    password = None
    if args.username is not None:
        password = os.environ.get(args.password_env or "") or getpass.getpass(
            f"MQTT password of {args.username}: "
        )
    tls = args.cafile is not None or args.cert is not None
    return Broker(
        args.broker,
        args.port or (8883 if tls else 1883),
        ca_file=args.cafile,
        cert_file=args.cert,
        key_file=args.client_key,
        username=args.username,
        password=password,
    )
