"""`edge-centre`: migrate the schema, run an ingest consumer, list gaps, fetch a gateway's learnt-state
backup, play a fleet."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog


def _partition(text: str) -> tuple[int, int]:
    i, _, n = text.partition("/")
    try:
        part = int(i), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/2 (got {text!r})") from None
    if not 0 <= part[0] < part[1]:
        raise argparse.ArgumentTypeError(f"expected 0 <= I < N (got {text!r})")
    return part


def _dsn(args: argparse.Namespace) -> str:
    dsn: str | None = args.dsn or os.environ.get("EDGE_CENTRE_DSN")
    if not dsn:
        raise SystemExit("edge-centre: give --dsn or EDGE_CENTRE_DSN (e.g. postgresql://ingest@db/water)")
    return dsn


def cmd_migrate(args: argparse.Namespace) -> int:
    from water_edge.centre.store import migrate

    applied = migrate(_dsn(args))
    print(f"applied: {', '.join(applied)}" if applied else "schema up to date")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from water_edge.centre.consumer import Broker, Consumer, IngestConfig, TlsFilesError
    from water_edge.centre.store import NEW_STREAMS_PER_DAY, migrate

    try:
        brokers = tuple(Broker.parse(uri) for uri in args.broker)
    except ValueError as exc:
        raise SystemExit(f"edge-centre ingest: --broker: {exc}") from None
    dsn = _dsn(args)
    cfg = IngestConfig(
        dsn=dsn,
        brokers=brokers,
        client_id=args.client_id or f"edge-centre-{socket.gethostname()}-{os.getpid()}",
        topic=args.topic,
        group=args.group,
        protocol=args.protocol,
        partition=args.partition,
        batch_messages=args.batch_messages,
        batch_ms=args.batch_ms,
        gap_timeout_s=args.gap_timeout_s,
        gap_check_s=args.gap_check_s,
        silent_warn_s=args.silent_warn_s,
        new_streams_per_day=NEW_STREAMS_PER_DAY
        if args.new_streams_per_day is None
        else args.new_streams_per_day,
        max_state_backup_bytes=args.max_state_backup_bytes,
        keep_state_backups=args.keep_state_backups,
        username=os.environ.get("EDGE_CENTRE_MQTT_USER"),
        password=os.environ.get("EDGE_CENTRE_MQTT_PASSWORD"),
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        verify_hostname=not args.no_verify_hostname,
        allow_plaintext_password=args.allow_plaintext_password,
    )
    try:
        cfg.check()
    except ValueError as exc:
        raise SystemExit(f"edge-centre ingest: {exc}") from None
    migrate(dsn)
    try:
        consumer = Consumer(cfg)
    except TlsFilesError as exc:
        raise SystemExit(f"edge-centre ingest: {exc}") from None
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop())
    signal.signal(signal.SIGINT, lambda *_: consumer.stop())
    consumer.run()
    return 0


def cmd_gaps(args: argparse.Namespace) -> int:
    from water_edge.centre.store import connect

    with connect(_dsn(args)) as conn:
        rows = conn.execute(
            "SELECT site, gateway, stream, first_seq, last_seq, missing, explained FROM open_gaps"
            " ORDER BY site, gateway, stream, first_seq"
        ).fetchall()
    for site, gateway, stream, first, last, missing, explained in rows:
        why = explained or "UNEXPLAINED"
        print(f"{site}/{gateway}/{stream}  seq {first}..{last}  ({missing} missing)  {why}")
    if not rows:
        print("no open gaps")
    return 0


def _utc(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_state_backups(args: argparse.Namespace) -> int:
    from water_edge.centre.store import connect

    with connect(_dsn(args)) as conn:
        rows = conn.execute(
            "SELECT site, gateway, backup, taken_at, size, files, agent_version, received_at"
            " FROM gateway_state_backups WHERE (%(site)s::text IS NULL OR site = %(site)s)"
            " AND (%(gateway)s::text IS NULL OR gateway = %(gateway)s)"
            " ORDER BY received_at DESC, taken_at DESC, site, gateway, backup",
            {"site": args.site, "gateway": args.gateway},
        ).fetchall()
    if not rows:
        print(
            f"no state backups{_of(args)}: has a gateway sent one?"
            " edge-agent status on it shows `state backup`"
        )
        return 0
    table = [("SITE/GATEWAY", "BACKUP", "TAKEN AT", "BYTES", "FILES", "AGENT", "RECEIVED AT")]
    for site, gateway, backup, taken_at, size, files, version, received_at in rows:
        table.append(
            (f"{site}/{gateway}", backup, _utc(taken_at), f"{size:,}", str(files), version, _utc(received_at))
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {3, 4}
    for row in table:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    return 0


def _of(args: argparse.Namespace) -> str:
    named = [v for v in (args.site, args.gateway) if v is not None]
    return f" of {'/'.join(named)}" if named else ""


def cmd_state_backup(args: argparse.Namespace) -> int:
    from water_edge.centre.store import connect

    name = f"{args.site}/{args.gateway}"
    out = None if args.out == "-" else Path(args.out)
    if out is None and sys.stdout.isatty():
        print(
            "edge-centre state-backup: refusing to write an archive to a terminal"
            " (--out FILE, or --out - into a pipe)",
            file=sys.stderr,
        )
        return 1
    if out is not None and not args.force and (out.exists() or out.is_symlink()):
        print(f"edge-centre state-backup: {out} exists (--force to replace it)", file=sys.stderr)
        return 1
    sql = (
        "SELECT backup, taken_at, size, files, agent_version, sha256, archive FROM state_backups"
        " WHERE site = %s AND gateway = %s"
    )
    params: list[Any] = [args.site, args.gateway]
    if args.backup is not None:
        sql += " AND backup = %s"
        params.append(args.backup)
    sql += " ORDER BY received_at DESC, created_ns DESC, backup DESC LIMIT 1"
    with connect(_dsn(args)) as conn:
        row = conn.execute(sql, params).fetchone()
    if row is None:
        if args.backup is not None:
            why = (
                f"no state backup {args.backup} of {name}"
                f" (edge-centre state-backups --site {args.site} --gateway {args.gateway} lists those kept)"
            )
        else:
            why = (
                f"no state backup of {name}: has the gateway sent one?"
                " edge-agent status on it shows `state backup`"
            )
        print(f"edge-centre state-backup: {why}", file=sys.stderr)
        return 1
    backup, taken_at, size, files, version, sha256, archive = row
    data = bytes(archive)
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        print(
            f"edge-centre state-backup: backup {backup} of {name} is damaged in the database (SHA-256)",
            file=sys.stderr,
        )
        return 1
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        try:
            _write_private(out, data, replace=args.force)
        except OSError as exc:
            print(f"edge-centre state-backup: {out}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    print(
        f"{'stdout' if out is None else out}: state backup {backup} of {name}, taken {_utc(taken_at)},"
        f" {size:,} bytes, {files} files, agent {version}, sha256 {sha256}\n"
        "on the new card, before its agent first starts: edge-agent state import FILE (docs/operations.md)",
        file=sys.stderr,
    )
    return 0


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """`data` into `path`, mode 0600 (calibrations name a site's assets); never over an existing
    file unless `replace`, which swaps it in whole."""
    if not replace:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
                f.flush()
                os.fchmod(fd, 0o600)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cmd_loadgen(args: argparse.Namespace) -> int:
    from water_edge.centre.consumer import Broker
    from water_edge.centre.loadgen import FleetSpec, run

    broker = Broker.parse(args.broker)
    if broker.tls:
        raise SystemExit("edge-centre loadgen: plain mqtt:// only (a test broker), not mqtts://")
    spec = FleetSpec(
        broker.host,
        broker.port,
        gateways=args.gateways,
        tags=args.tags,
        interval_s=args.interval_s,
        duration_s=args.duration_s,
        connections=args.connections,
        outage_at_s=args.outage_at_s,
        outage_s=args.outage_s,
    )
    result = run(spec)
    print(
        f"offered {result.messages} messages, {result.readings} readings; acked {result.acked};"
        f" generator behind schedule by at most {result.behind_s:.2f} s"
    )
    return 0 if result.acked == result.messages else 1


def _state_backup_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "state-backups",
        help="list the gateways' learnt-state backups kept, newest first",
        description="List the complete learnt-state backups the ingest keeps (the newest few of each"
        " gateway), newest first: site/gateway, backup id, when the gateway took it (its clock, UTC),"
        " bytes, learnt-state files, agent version, when the centre received it (UTC).",
    )
    p.add_argument("--site", help="only this site's gateways")
    p.add_argument("--gateway", help="only this gateway")
    p.set_defaults(fn=cmd_state_backups)

    p = sub.add_parser(
        "state-backup",
        help="write a gateway's learnt-state backup to a file, for `edge-agent state import` on a new card",
        description="Write a gateway's newest learnt-state backup (or the one named by --backup) to FILE:"
        " the .tar.gz `edge-agent state export` writes, to put on the gateway's new card with"
        " `edge-agent state import FILE` before its agent first starts. The file is private (mode 0600):"
        " calibrations name a site's assets.",
    )
    p.add_argument("--site", required=True)
    p.add_argument("--gateway", required=True)
    p.add_argument(
        "--backup", help="this backup id (edge-centre state-backups lists them; default: the newest)"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="where to write it; - for stdout (binary)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(fn=cmd_state_backup)


def main(argv: list[str] | None = None) -> int:
    from water_edge.centre.state_backups import DEFAULT_KEEP, DEFAULT_MAX_BYTES

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    parser = argparse.ArgumentParser(prog="edge-centre", description=__doc__)
    parser.add_argument("--dsn", help="PostgreSQL connection string (or EDGE_CENTRE_DSN)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="create or update the schema").set_defaults(fn=cmd_migrate)

    p = sub.add_parser("ingest", help="consume the JSON stream into PostgreSQL (runs until stopped)")
    p.add_argument(
        "--broker",
        action="append",
        required=True,
        help="mqtts://host[:port] (TLS, default port 8883) or mqtt://host[:port] (plain, 1883);"
        " repeat for failover",
    )
    p.add_argument(
        "--ca-file",
        type=Path,
        help="mqtts://: the CA of the broker's certificate (default: the system's CAs)",
    )
    p.add_argument(
        "--cert-file",
        type=Path,
        help="mqtts://: this consumer's client certificate (its CN is its MQTT user)",
    )
    p.add_argument("--key-file", type=Path, help="mqtts://: the client certificate's private key")
    p.add_argument(
        "--no-verify-hostname",
        action="store_true",
        help="mqtts://: accept a broker certificate that does not name the --broker host (testing only)",
    )
    p.add_argument(
        "--allow-plaintext-password",
        action="store_true",
        help="send EDGE_CENTRE_MQTT_PASSWORD over mqtt:// to a host other than this one (refused otherwise)",
    )
    p.add_argument("--client-id", help="MQTT client id (persistent session); stable per consumer")
    p.add_argument("--topic", default="water/+/+/+", help="topic filter (default water/+/+/+)")
    p.add_argument("--group", default="ingest", help="shared subscription group ($share/GROUP/...)")
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    p.add_argument(
        "--partition",
        type=_partition,
        help="I/N: static partition instead of $share (brokers without shared subscriptions)",
    )
    p.add_argument("--batch-messages", type=int, default=500)
    p.add_argument("--batch-ms", type=int, default=100)
    p.add_argument(
        "--gap-timeout-s", type=float, default=300.0, help="a missing seq is a gap after this long"
    )
    p.add_argument("--gap-check-s", type=float, default=10.0)
    p.add_argument(
        "--silent-warn-s",
        type=float,
        default=60.0,
        help="warn when nothing arrives this long after subscribing (an ACL without read; 0: never)",
    )
    p.add_argument(
        "--new-streams-per-day",
        type=int,
        help="new streams (a new stream, outbox epoch or site) a gateway may start in 24 h; the messages"
        " of more are refused and kept in `rejected` (default 1000; 0: no limit)",
    )
    p.add_argument(
        "--max-state-backup-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="a gateway's learnt-state backup (.../state_backup) larger than this is refused, and a gateway's"
        f" incomplete ones are held up to this much (default {DEFAULT_MAX_BYTES} = 64 MiB)",
    )
    p.add_argument(
        "--keep-state-backups",
        type=int,
        default=DEFAULT_KEEP,
        help=f"complete learnt-state backups kept per gateway, the newest (default {DEFAULT_KEEP})",
    )
    p.set_defaults(fn=cmd_ingest)

    sub.add_parser("gaps", help="list open gaps (missing seqs) with their explanation").set_defaults(
        fn=cmd_gaps
    )

    _state_backup_parsers(sub)

    p = sub.add_parser("loadgen", help="N simulated gateways publishing the documented payload")
    p.add_argument("--broker", required=True)
    p.add_argument("--gateways", type=int, default=100)
    p.add_argument("--tags", type=int, default=100)
    p.add_argument("--interval-s", type=float, default=1.0)
    p.add_argument("--duration-s", type=float, default=30.0)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--outage-at-s", type=float)
    p.add_argument("--outage-s", type=float, default=0.0)
    p.set_defaults(fn=cmd_loadgen)

    args = parser.parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
