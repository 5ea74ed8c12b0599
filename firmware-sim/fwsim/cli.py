"""`edge-sim`: run the hardware-in-the-loop plant, describe it or a scenario, write datasets."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from water_edge.sim.registers import MAX_BENCH_TAGS, MAX_READ_REGISTERS, POINTS


def _parser(*, datasets: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-sim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the plant and serve until SIGINT/SIGTERM")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=5020, help="0 picks a free port")
    run.add_argument("--seed", type=int, default=None, help="default: the scenario's seed, else 0")
    run.add_argument("--scenario", type=Path, default=None, help="a scenario TOML file (docs/scenarios.md)")
    run.add_argument(
        "--speed",
        type=float,
        default=None,
        help="model seconds per wall-clock second (default: the scenario's, else 1)",
    )
    run.add_argument(
        "--bench-tags",
        type=int,
        default=0,
        metavar="N",
        help=f"add N float32 bench tags (input registers 10000.., unit 1; N <= {MAX_BENCH_TAGS})",
    )
    run.add_argument(
        "--endpoints-file",
        type=Path,
        default=None,
        help="write the endpoints as JSON once the ports listen",
    )
    run.add_argument(
        "--components",
        default="all",
        help="comma-separated parts to start besides the Modbus TCP PLC "
        "(modbus_rtu, opcua, mbus, wmbus, hydrophones), 'none', or 'all' (default)",
    )
    run.add_argument(
        "--workdir", type=Path, default=None, help="where components put files (made when missing)"
    )
    run.add_argument(
        "--max-registers",
        type=int,
        default=MAX_READ_REGISTERS,
        metavar="N",
        help="the PLC refuses reads of more than N registers with exception 3, as drives and small "
        f"PLCs do (Modbus TCP and RTU; 1..{MAX_READ_REGISTERS}, default {MAX_READ_REGISTERS})",
    )
    run.add_argument(
        "--any-unit",
        action="store_true",
        help="the Modbus TCP PLC answers every unit ID as unit 1, as PLCs that ignore the unit ID do "
        "(default: units 1 and 2, exception 11 for the others, as a gateway)",
    )
    lister = sub.add_parser("list", help="describe the register map, or what a scenario contains")
    lister.add_argument("--scenario", type=Path, nargs="+", default=None, metavar="FILE")
    # Its own parser lives with the WAV writer (fwsim.hydrophone_stream); listed here for --help.
    sub.add_parser("hydrophones", help="write synthetic hydrophone audio to a WAV file", add_help=False)
    sub.add_parser("machine-sound", help="write a pump's sound (with faults) to a WAV file", add_help=False)
    dataset = sub.add_parser("dataset", help="write labelled training/evaluation data (pump, leak)")
    if datasets:  # importing the dataset writers costs `edge-sim run` start-up time
        from water_edge.sim.dataset import add_arguments

        add_arguments(dataset)
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


def _list_scenarios(paths: list[Path]) -> int:
    """Each scenario's timeline, a blank line between; a bad file is reported and the rest listed."""
    from water_edge.sim.scenario import ScenarioError, load_scenario

    status = 0
    for i, path in enumerate(paths):
        if i:
            print()
        try:
            print("\n".join(load_scenario(path).describe()))
        except ScenarioError as exc:
            print(f"edge-sim: {exc}", file=sys.stderr)
            status = 2
    return status


def _components(value: str) -> list[str] | None:
    if value == "all":
        return None
    if value == "none":
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


def _one_blas_thread() -> None:
    """One BLAS thread unless the environment sets a count, before numpy loads, as `edge-agent` asks
    (its core/blas_threads.py says why; the simulator imports nothing of the product): the products
    here are small, and a threaded BLAS spends many times their CPU handing them between threads."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one exit per subcommand/error
    _one_blas_thread()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hydrophones"]:
        from water_edge.sim.hydrophone_stream import main as hydrophones_main

        return hydrophones_main(argv[1:])
    if argv[:1] == ["machine-sound"]:
        from water_edge.sim.machine_sound import main as machine_sound_main

        return machine_sound_main(argv[1:])
    args = _parser(datasets=argv[:1] == ["dataset"] or "-h" in argv or "--help" in argv).parse_args(argv)
    from water_edge.sim.scenario import ScenarioError, load_scenario

    if args.command == "list":
        if args.scenario:
            return _list_scenarios(args.scenario)
        _list()
        return 0
    scenario = None
    try:
        if getattr(args, "scenario", None) is not None:
            scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"edge-sim: {exc}", file=sys.stderr)
        return 2
    if args.command == "dataset":
        from water_edge.sim.dataset import run as run_dataset

        return run_dataset(args)
    problem = _run_options_problem(args)
    if problem is not None:
        print(f"edge-sim: {problem}", file=sys.stderr)
        return 2
    seed = args.seed
    if seed is None:
        seed = scenario.header.seed if scenario is not None and scenario.header.seed is not None else 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from water_edge.sim.runner import run

    try:
        asyncio.run(
            run(
                args.host,
                args.port,
                seed=seed,
                bench_tags=args.bench_tags,
                endpoints_file=args.endpoints_file,
                announce=lambda line: print(line, flush=True),
                components=_components(args.components),
                workdir=args.workdir,
                scenario=scenario,
                speed=args.speed,
                max_read_registers=args.max_registers,
                any_unit=args.any_unit,
            )
        )
    except OSError as exc:
        print(f"edge-sim: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_options_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with `run`'s options, or None. A `--workdir` not there yet is made (components
    make their files in it)."""
    if not 0 <= args.bench_tags <= MAX_BENCH_TAGS:
        return f"--bench-tags must be 0..{MAX_BENCH_TAGS}"
    if not 1 <= args.max_registers <= MAX_READ_REGISTERS:
        return f"--max-registers must be 1..{MAX_READ_REGISTERS}"
    if args.speed is not None and not 0 < args.speed <= 1000:
        return "--speed must be in (0, 1000]"
    if args.workdir is not None:
        try:
            args.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"--workdir {args.workdir}: {exc.strerror or exc}"
    return None


if __name__ == "__main__":
    sys.exit(main())
