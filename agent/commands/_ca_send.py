"""`edge-agent ca send-command`: sign a command, send it to its gateway and print the answer
(agent.command_sender; docs/security.md, "Signed commands").

    edge-agent ca send-command --key ops.pem --key-id ops --type state_backup --target north/gw-07 \\
        --broker broker.north.example --cafile ca.pem --cert ops.crt --client-key ops.key

Prints the answer (`status`, `reason`, `result`) as one JSON line on stdout; exits 0 when the
gateway answered `ok`, 1 when it refused the command, it failed, or no answer came within `--wait`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from water_edge.agent.commands._console import add_broker_arguments, add_command_arguments, broker_from
from water_edge.agent.commands._exits import EXIT_FAILED, EXIT_OK
from water_edge.core.cli_numbers import number


def register_send(sub: Any) -> None:
    p = sub.add_parser(
        "send-command",
        help="sign a command, send it to its gateway and print the gateway's answer (docs/security.md)",
    )
    add_command_arguments(p)
    add_broker_arguments(p)
    p.add_argument(
        "--wait",
        type=number(1, 86400),
        default=60.0,
        help="seconds to wait for the answer (default 60; a calibration may take minutes)",
    )
    p.set_defaults(func=_send_command)


def _fail(message: str) -> int:
    sys.stderr.write(f"edge-agent ca: {message}\n")
    return EXIT_FAILED


def _send_command(args: argparse.Namespace) -> int:
    from water_edge.agent.command_sender import send_command
    from water_edge.agent.operator_link import ConsoleError, OperatorLink
    from water_edge.core.errors import AgentError
    from water_edge.provisioning.sign_command import older_release_note, signed_command

    if args.target.count("/") != 1 or not all(args.target.split("/")):
        return _fail(f"--target {args.target!r} is not SITE/GATEWAY")
    if note := older_release_note(args.command_type):
        sys.stderr.write(note + "\n")
    try:
        payload = signed_command(
            args.key, args.key_id, args.command_type, args.target, args.args,
            args_file=args.args_file, ttl_s=args.ttl,
        )  # fmt: skip
        base = f"{args.prefix}/{args.target}"
        link = OperatorLink.to_gateway(broker_from(args), base, args.sparkplug, name="command")
        answer = send_command(link, base, payload, args.wait)
    except (ConsoleError, AgentError) as exc:
        return _fail(str(exc))
    sys.stdout.write(
        orjson.dumps({"status": answer.status, "reason": answer.reason, "result": answer.result}).decode()
        + "\n"
    )
    if answer.status == "ok":
        return EXIT_OK
    if answer.unread:
        return _fail(f"the gateway refused the command without reading it: {answer.reason}")
    return _fail(f"the gateway answered {answer.status}: {answer.reason}")
