"""`edge-agent ca send-state-restore` / `sign-state-restore`: a learnt-state archive onto a gateway
by signed command (agent.restore_sender; docs/fleet.md, "Restoring a card from the centre").

    edge-agent ca send-state-restore gw-07.tar.gz --key ops.pem --key-id ops --target north/gw-07 \\
        --broker broker.north.example --cafile ca.pem --cert ops.crt --client-key ops.key
    edge-agent ca sign-state-restore gw-07.tar.gz --key ops.pem --key-id ops --target north/gw-07 \\
        | mosquitto_pub -l -q 1 -t water/north/gw-07/cmd/state_restore ...

`send` exits 0 once the gateway has put the archive in place (or staged it, with `--no-restart` or
`--wait 0`), 1 when it refused it, did not answer or failed to put it in place; `sign` exits 0
with the envelopes on stdout, 1 for an archive the gateway would refuse.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from water_edge.agent.commands._console import add_broker_arguments, broker_from
from water_edge.agent.commands._exits import EXIT_FAILED, EXIT_OK
from water_edge.core.cli_numbers import number, whole

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from water_edge.agent.restore_sender import Outcome, RestoreArchive

RESTORE_PARTS_PER_MINUTE = 30  # [security] max_commands_per_minute's default


def register_restore(sub: Any) -> None:
    for name, helptext, run, ttl, why in (
        (
            "send-state-restore",
            "send a learnt-state archive to a gateway by signed command and follow it until the "
            "gateway has put it in place (docs/fleet.md, Restoring a card from the centre)",
            _send,
            300,
            "each part is signed as it is sent",
        ),
        (
            "sign-state-restore",
            "print the signed state_restore commands that carry a learnt-state archive, one a line, "
            "for a publisher of your own (mosquitto_pub -l)",
            _sign,
            3600,
            "all are signed now, sent later",
        ),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument(
            "archive",
            type=Path,
            help="from `edge-centre state-backup` or `edge-agent state export`; - for stdin "
            "(edge-centre state-backup ... --out - | ...)",
        )
        p.add_argument("--key", type=Path, required=True, help="operator private key (PEM)")
        p.add_argument("--key-id", required=True, help="the operator name the gateway config trusts")
        p.add_argument("--target", required=True, help="SITE/GATEWAY: the gateway that takes it")
        p.add_argument(
            "--part-kib", type=whole(8, 3072), default=192, help="KiB of archive a part (default 192)"
        )
        p.add_argument(
            "--ttl",
            type=whole(10),
            default=ttl,
            help=f"seconds each part is valid (default {ttl}: {why}; at most the gateway's "
            "[security] max_command_ttl_s, 3600 by default)",
        )
        p.add_argument(
            "--force", action="store_true", help="an archive of another gateway (a renamed replacement)"
        )
        p.add_argument(
            "--no-restart",
            dest="restart",
            action="store_false",
            help="stage it for the gateway's next start instead of restarting it now",
        )
        if name == "sign-state-restore":
            p.add_argument("--parts", type=_part_range, help="only parts FIRST-LAST (0-based), e.g. 30-59")
            p.add_argument("--prefix", default="water", help="the gateway's [uplink] prefix (default water)")
        else:
            _broker_arguments(p)
        p.set_defaults(func=run)


def _broker_arguments(p: argparse.ArgumentParser) -> None:
    add_broker_arguments(p)
    p.add_argument(
        "--per-minute",
        type=whole(1, 600),
        default=RESTORE_PARTS_PER_MINUTE,
        help="parts a minute at most: the key's rate on the gateway (default 30, [security] "
        "max_commands_per_minute)",
    )
    p.add_argument(
        "--answer-timeout",
        type=number(1, 3600),
        default=60.0,
        help="seconds to wait for a part's answer before sending it again (default 60)",
    )
    p.add_argument(
        "--wait",
        type=number(0, 86400),
        default=300.0,
        help="seconds to wait, after the archive is staged, for the restarted gateway to say it put "
        "it in place (default 300; 0: do not wait)",
    )


def _part_range(text: str) -> range:
    first, _, last = text.partition("-")
    try:
        low, high = int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIRST-LAST (e.g. 30-59)") from None
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: 0 <= FIRST <= LAST")
    return range(low, high + 1)


def _fail(message: str) -> int:
    sys.stderr.write(f"edge-agent ca: {message}\n")
    return EXIT_FAILED


class _RefusedError(Exception):
    """An archive, key or target the gateway would refuse: the message for the operator."""


def _archive(args: argparse.Namespace) -> tuple[RestoreArchive, Ed25519PrivateKey]:
    """The checked archive and the operator key; _RefusedError with why not."""
    from water_edge.agent.restore_sender import RestoreArchive
    from water_edge.agent.state_transfer import StateTransferError
    from water_edge.core.errors import AgentError
    from water_edge.provisioning.sign_command import load_operator_key, older_release_note

    if args.target.count("/") != 1 or not all(args.target.split("/")):
        raise _RefusedError(f"--target {args.target!r} is not SITE/GATEWAY")
    stdin = args.archive == Path("-")
    try:
        key = load_operator_key(args.key)
        archive = RestoreArchive(
            Path("stdin") if stdin else args.archive,
            args.target,
            part_bytes=args.part_kib * 1024,
            force=args.force,
            content=sys.stdin.buffer.read() if stdin else None,
        )
    except (StateTransferError, AgentError) as exc:
        raise _RefusedError(str(exc)) from None
    except OSError as exc:
        raise _RefusedError(f"{exc.filename or args.archive}: {exc.strerror}") from None
    if note := older_release_note("state_restore"):
        sys.stderr.write(note + "\n")
    return archive, key


def _what(archive: RestoreArchive) -> str:
    from water_edge.core import units
    from water_edge.core.instants import iso

    done = archive.checked
    return (
        f"what {done.gateway} (site {done.site}) had learnt by {iso(done.created_ns)}: {done.files} files, "
        f"{units.size(done.bytes)}, {archive.count} parts, transfer {archive.transfer[:16]}"
    )


def _sign(args: argparse.Namespace) -> int:
    try:
        archive, key = _archive(args)
    except _RefusedError as exc:
        return _fail(str(exc))
    indices = [i for i in (args.parts or range(archive.count)) if i < archive.count]
    sys.stderr.write(
        f"{len(indices)} parts of {_what(archive)}; publish one message a line: | mosquitto_pub -l -q 1 -t "
        f"{args.prefix}/{args.target}/cmd/state_restore ...\n"
    )
    if len(indices) > RESTORE_PARTS_PER_MINUTE:
        sys.stderr.write(
            f"note: more than {RESTORE_PARTS_PER_MINUTE} parts: a gateway takes [security] "
            "max_commands_per_minute (30) from one key and holds 16 commands waiting; send --parts "
            "0-14, then 15-29 ..., or use send-state-restore, which paces itself\n"
        )
    for index in indices:
        sys.stdout.write(
            archive.part(key, args.key_id, index, ttl_s=args.ttl, restart=args.restart).decode() + "\n"
        )
    return EXIT_OK


def _send(args: argparse.Namespace) -> int:
    from water_edge.agent.operator_link import ConsoleError
    from water_edge.agent.restore_sender import RestoreSender

    try:
        archive, key = _archive(args)
    except _RefusedError as exc:
        return _fail(str(exc))
    broker = broker_from(args)

    def say(line: str) -> None:
        sys.stderr.write(f"edge-agent ca: {line}\n")

    say(f"sending {_what(archive)} to {args.prefix}/{args.target}")
    sender = RestoreSender(
        archive, key, args.key_id, broker,
        prefix=args.prefix, sparkplug=args.sparkplug, per_minute=args.per_minute,
        answer_timeout_s=args.answer_timeout, restart=args.restart, wait_restored_s=args.wait,
        ttl_s=args.ttl, say=say,
    )  # fmt: skip
    try:
        outcome = sender.run()
    except ConsoleError as exc:
        return _fail(str(exc))
    return _report(outcome, args)


def _report(outcome: Outcome, args: argparse.Namespace) -> int:
    staged = outcome.staged
    print(
        f"staged on {args.target}: {staged.get('files')} files taken by {staged.get('site')}/"
        f"{staged.get('gateway')} {staged.get('taken_at')} ({outcome.parts_sent} parts sent)"
    )
    if not staged.get("restarting"):
        print("it is put in place at the gateway's next start")
        return EXIT_OK
    if args.wait == 0:
        print("the gateway restarts and puts it in place at its start (not waited for)")
        return EXIT_OK
    if outcome.restored is None:
        return _fail(
            f"the gateway did not say within {args.wait:g} s that it put the archive in place: "
            f"see its status (state restore:) and its events"
        )
    if not outcome.restored_ok:
        return _fail(f"the gateway could not put the archive in place: {outcome.restored.get('reason')}")
    print(f"restored: the gateway put {outcome.restored.get('files')} files in place at its start")
    return EXIT_OK
