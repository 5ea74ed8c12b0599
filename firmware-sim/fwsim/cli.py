"""`edge-sim`: run the hardware-in-the-loop plant, or list what it serves."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fwsim.registers import MAX_BENCH_TAGS, POINTS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the plant and serve until SIGINT/SIGTERM")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=5020, help="0 picks a free port")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--bench-tags", type=int, default=0, metavar="N",
        help=f"add N float32 bench tags (input registers 10000.., unit 1; N <= {MAX_BENCH_TAGS})",
    )  # fmt: skip
    run.add_argument(
        "--endpoints-file", type=Path, default=None,
        help="write the endpoints as JSON once the ports listen",
    )  # fmt: skip
    run.add_argument(
        "--components", default="all",
        help="comma-separated parts to start besides the Modbus TCP PLC "
             "(modbus_rtu, opcua, mbus, hydrophones), 'none', or 'all' (default)",
    )  # fmt: skip
    run.add_argument("--workdir", type=Path, default=None, help="where components put files")
    sub.add_parser("list", help="describe the default pump station's registers")
    return parser


def _list() -> None:
    print(f"{'unit':>4}  {'table':<8} {'addr':>5}  {'type':<8} {'scale':>6}  {'unit':<5} name")
    for p in POINTS:
        enc = p.encoding if p.encoding != "string" else f"str[{p.length}]"
        order = (
            ""
            if (p.byte_order, p.word_order) == ("big", "big")
            else (f"  (byte {p.byte_order}, word {p.word_order})")
        )
        bits = f"  bits: {', '.join(p.bit_names)}" if p.bit_names else ""
        print(
            f"{p.unit_id:>4}  {p.table:<8} {p.address:>5}  {enc:<8} {p.scale:>6g}  {p.unit:<5} "
            f"{p.name}: {p.description}{order}{bits}"
        )


def _components(value: str) -> list[str] | None:
    if value == "all":
        return None
    if value == "none":
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        _list()
        return 0
    if not 0 <= args.bench_tags <= MAX_BENCH_TAGS:
        print(f"edge-sim: --bench-tags must be 0..{MAX_BENCH_TAGS}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from fwsim.runner import run

    try:
        asyncio.run(
            run(
                args.host,
                args.port,
                seed=args.seed,
                bench_tags=args.bench_tags,
                endpoints_file=args.endpoints_file,
                announce=lambda line: print(line, flush=True),
                components=_components(args.components),
                workdir=args.workdir,
            )
        )
    except OSError as exc:
        print(f"edge-sim: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
