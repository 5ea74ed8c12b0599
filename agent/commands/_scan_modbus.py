"""`edge-agent scan modbus`: which unit IDs answer behind a Modbus TCP address or on an RTU line,
and (with `--map`) which addresses of a table each of them reads; then the config to paste.

    edge-agent scan modbus --host 10.1.2.3 [--port 502] [--units 1-247] [--table holding] [--address 0]
    edge-agent scan modbus --serial-port /dev/ttyUSB0 [--baudrate 19200 --parity even --stopbits 1]
    edge-agent scan modbus --host 10.1.2.3 --units 1 --map 0-999      # the readable addresses

Each unit ID gets one read at `--address`. A value, or an exception answer of the device's own
(illegal address, illegal function), means a device is there; a TCP-to-RTU gateway's exception 10
or 11 means nothing is behind that unit ID; on a serial line nobody answers for an empty one (each
costs `--timeout`). A TCP device that answers every unit ID alike, an unlikely one too, ignores it
(most Modbus TCP devices that are not gateways): its config uses unit ID 1.

Stop the agent first if it polls the same serial port or a device that takes one connection. Exit 0
when a unit answered, 1 when none did, 2 when the options, the host or the port cannot be used.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Final

from water_edge.agent.commands._exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from water_edge.agent.commands._interrupt import run_until_interrupted
from water_edge.agent.commands._modbus_line import open_line

if TYPE_CHECKING:
    pass

PARITIES: Final = ("none", "even", "odd")
MAX_UNITS_SHOWN: Final = 40
MAX_TAGS_PER_UNIT: Final = 10
DEFAULT_TCP_PORT: Final = 502


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="a Modbus TCP device or TCP-to-RTU gateway")
    where.add_argument("--serial-port", help="a Modbus RTU line, e.g. /dev/ttyUSB0")
    p.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
    p.add_argument("--baudrate", type=int, default=19200, help="RTU line speed (default 19200)")
    p.add_argument("--parity", choices=PARITIES, default="even", help="RTU parity (default even: 8E1)")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    p.add_argument("--local-echo", action="store_true", help="the RS-485 adapter echoes every request")
    p.add_argument("--units", default="1-247", help="unit IDs to try: 1-247 (default), or e.g. 1,2,10-20")
    p.add_argument("--table", choices=("holding", "input", "coil", "discrete"), default="holding")
    p.add_argument("--address", type=int, default=0, help="the address read from each unit (default 0)")
    p.add_argument("--timeout", type=float, default=0.5, help="seconds to wait for each answer (default 0.5)")
    p.add_argument(
        "--map",
        metavar="FIRST-LAST",
        help="also find which addresses FIRST..LAST of --table each unit found reads",
    )
    p.add_argument(
        "--max-registers", type=int, default=125, help="largest read --map sends (default 125; 2000 bits)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per unit that answered")
    p.set_defaults(func=cmd_scan_modbus)


class UsageError(Exception):
    pass


def parse_units(text: str, low: int, high: int) -> list[int]:
    """`1-247`, `1,2,10-20`: the unit IDs in order, each once; UsageError outside `low`..`high`."""
    units: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise UsageError(f"--units {text!r}: expected unit IDs like 1-247 or 1,2,10-20")
        a, b = int(match.group(1)), int(match.group(2) or match.group(1))
        if not low <= a <= b <= high:
            raise UsageError(f"--units {text!r}: unit IDs run {low}..{high} here, in ascending ranges")
        units.extend(u for u in range(a, b + 1) if u not in units)
    return units


def parse_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if match is None or not int(match.group(1)) <= int(match.group(2)) <= 65535:
        raise UsageError(f"--map {text!r}: expected FIRST-LAST addresses, e.g. 0-999 (at most 65535)")
    return int(match.group(1)), int(match.group(2))


def cmd_scan_modbus(args: argparse.Namespace) -> int:
    from water_edge.core import logs
    from water_edge.core.errors import DriverIOError

    logs.configure("critical", json=False)  # pymodbus logs each refused read; the command says what it means
    try:
        tcp = args.host is not None
        units = parse_units(args.units, 0 if tcp else 1, 255 if tcp else 247)
        span = parse_range(args.map) if args.map else None
        if not 0 <= args.address <= 65535 or not 0.01 <= args.timeout <= 60:
            raise UsageError("--address runs 0..65535, --timeout 0.01..60 s")
        limit = 2000 if args.table in ("coil", "discrete") else 125
        if not 1 <= args.max_registers <= limit:
            raise UsageError(f"--max-registers runs 1..{limit} for table {args.table}")
        settings = line_settings(args)
    except UsageError as exc:
        _say(f"edge-agent scan modbus: {exc}")
        return EXIT_USAGE
    started = time.monotonic()
    try:
        scan = run_until_interrupted(_scan(args, settings, units, span))
    except DriverIOError as exc:
        _say(f"edge-agent scan modbus: {exc}")
        return EXIT_USAGE
    elapsed = time.monotonic() - started
    if not any(a.present for a in scan.answers):
        why = why_none_answered(scan, args)
        _say(f"no unit answered on {scan.where} ({len(scan.answers)} tried in {elapsed:.0f} s): {why}")
        return EXIT_FAILED
    if args.json:
        _print_json([a for a in scan.answers if a.present], scan.maps)
    else:
        _print_table(scan, args, elapsed)
    return EXIT_OK


def why_none_answered(scan: _Scan, args: argparse.Namespace) -> str:
    """What to check when no unit answered, from what the unit IDs tried did instead."""
    answers = scan.answers
    if any(a.outcome == "gateway" for a in answers):
        return "a gateway answers, but no device behind it: check its serial side (wiring, speed, parity)"
    if args.host is None:
        return _why_the_line_is_quiet(scan)
    stray = next((a for a in answers if a.outcome == "stray"), None)
    if stray is not None:
        return f"unit {stray.unit_id} {stray.detail}"
    closed = next((a for a in answers if a.outcome == "closed"), None)
    if closed is not None:
        return (
            f"the device closes the connection instead of answering (unit {closed.unit_id}): a connection "
            "limit? stop other masters, or the agent, polling it"
        )
    if scan.late_answers:
        return f"answers come after --timeout {args.timeout:g} s: give a longer --timeout"
    return (
        f"nothing answered within --timeout {args.timeout:g} s: check the unit IDs and --port "
        "(behind a gateway, a --timeout longer than its own)"
    )


def _why_the_line_is_quiet(scan: _Scan) -> str:
    if scan.echoes:
        return (
            "each request came back as it was sent: the RS-485 adapter echoes its own transmission; "
            "scan again with --local-echo (local_echo = true in the config)"
        )
    if scan.line_bytes:
        return (
            f"bytes came back that are no Modbus RTU answer ({scan.line_bytes[:16].hex(' ')}): check "
            "--baudrate, --parity and --stopbits against the devices', and the wiring (A/B, termination)"
        )
    return (
        "nothing came back at all: check the unit IDs, the wiring (A/B swapped? the adapter's ground), "
        "and the line settings (--baudrate, --parity)"
    )


def line_settings(args: argparse.Namespace) -> Any:
    """The TCP or RTU config the options give; `UsageError` naming the option the config refuses."""
    from pydantic import ValidationError

    from water_edge.drivers.modbus.config import BAUD_RATES, ModbusRtuConfig, ModbusTcpConfig

    common = {
        "name": "scan", "timeout_ms": max(10, round(args.timeout * 1000)), "retries": 0,
        "tags": [{"name": "probe", "address": 0}],
    }  # fmt: skip
    if args.host is not None:
        options = {"host": ("--host", args.host), "port": ("--port", args.port)}
        settings = {**common, "kind": "modbus_tcp", "host": args.host, "port": args.port}
        model: Any = ModbusTcpConfig
    else:
        if args.baudrate not in BAUD_RATES:  # checked by the model as a whole, not as a field
            raise UsageError(f"--baudrate {args.baudrate}: expected one of {', '.join(map(str, BAUD_RATES))}")
        options = {"port": ("--serial-port", args.serial_port)}
        settings = {
            **common, "kind": "modbus_rtu", "port": args.serial_port, "baudrate": args.baudrate,
            "parity": args.parity, "stopbits": args.stopbits, "local_echo": args.local_echo,
        }  # fmt: skip
        model = ModbusRtuConfig
    try:
        return model.model_validate(settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        option, value = options.get(str(error["loc"][0]) if error["loc"] else "", ("options", ""))
        expected = str(error["msg"]).removeprefix("Value error, ")
        raise UsageError(f"{option} {value!r}: {expected[:1].lower()}{expected[1:]}") from None


@dataclass
class _Scan:
    """What a scan found: each unit ID's answer, the register maps, where, and whether the unit
    IDs that answered are one device that ignores the unit ID."""

    answers: list[Any]
    maps: dict[int, Any]
    where: str
    one_device: bool
    late_answers: bool  # answers came to requests that had timed out
    echoes: int = 0  # RTU: unanswered requests that came back as they were sent
    line_bytes: bytes = b""  # RTU: bytes that came back instead of an answer
    cut_short: tuple[int, ...] = ()  # RTU: unit IDs in whose turn bytes came that are no whole answer


async def _scan(
    args: argparse.Namespace, settings: Any, units: list[int], span: tuple[int, int] | None
) -> _Scan:
    from water_edge.drivers.modbus.scan import identify, ignores_unit_id, map_table, scan_units

    line = await open_line(settings)
    try:
        _say(f"scanning {line.where}, unit IDs {args.units}, {args.table} {args.address} ...")
        answers = await scan_units(line.send, units, args.table, args.address, _progress(len(units)))
        one = await ignores_unit_id(
            line.send, line.ask, answers, args.table, args.address, serial_line=line.serial
        )
        for i, answer in enumerate(answers):
            if answer.present and (i == 0 or not one):  # one device: asked and mapped once
                answers[i] = replace(answer, identity=await identify(line.ask, answer.unit_id))
        maps = {}
        if span is not None:
            present = [a.unit_id for a in answers if a.present]
            for unit_id in present[:1] if one else present:
                _say(f"mapping unit {unit_id} {args.table} {span[0]}-{span[1]} ...")
                maps[unit_id] = await map_table(
                    line.send, unit_id, args.table, *span, max_count=args.max_registers
                )
        return _Scan(
            answers,
            maps,
            line.where,
            one,
            line.late_answers,
            line.echoes,
            line.line_bytes,
            tuple(line.cut_short),
        )
    finally:
        line.close()


def _progress(total: int) -> Any:
    seen = [0]

    def on_answer(answer: Any) -> None:
        seen[0] += 1
        if answer.present:
            _say(f"  unit {answer.unit_id}: {answer.detail}")
        elif seen[0] % 50 == 0:
            _say(f"  ... {seen[0]} of {total} tried")

    return on_answer


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _unit_doc(answer: Any, register_map: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "unit_id": answer.unit_id, "outcome": answer.outcome, "detail": answer.detail,
        "value": answer.value, "code": answer.code, "identity": answer.identity or None,
    }  # fmt: skip
    if register_map is not None:
        doc["map"] = {
            "table": register_map.table, "first": register_map.first, "last": register_map.last,
            "readable": [list(r) for r in register_map.readable],
            "unanswered": [list(r) for r in register_map.unanswered],
            "bad_answers": [list(r) for r in register_map.misanswered],
            "not_supported": register_map.not_supported or None, "stopped_at": register_map.stopped_at,
            "reads": register_map.requests,
        }  # fmt: skip
    return doc


def _print_json(found: list[Any], maps: dict[int, Any]) -> None:
    import orjson

    for answer in found:
        sys.stdout.write(orjson.dumps(_unit_doc(answer, maps.get(answer.unit_id))).decode() + "\n")


def _print_table(scan: _Scan, args: argparse.Namespace, elapsed: float) -> None:
    answers, maps = scan.answers, scan.maps
    found = [a for a in answers if a.present]
    probe = f"{args.table} {args.address}"
    print(f"{scan.where}: {len(found)} of {len(answers)} unit ID(s) answer ({probe}, {elapsed:.0f} s)")
    if scan.one_device:
        print("every unit ID tried answers: one device that ignores the unit ID (use unit_id = 1)")
        found = found[:1]
    for answer in found[:MAX_UNITS_SHOWN]:
        print(f"{answer.unit_id:>5}  {answer.detail}" + (f"  [{answer.identity}]" if answer.identity else ""))
    if len(found) > MAX_UNITS_SHOWN:
        print(f"  ... and {len(found) - MAX_UNITS_SHOWN} more (--json lists them all)")
    absent = [a for a in answers if not a.present]
    if absent:
        kinds = sorted({a.detail for a in absent})
        print(f"{len(absent)} other unit ID(s): {'; '.join(kinds)}")
    cut = sorted(set(scan.cut_short) - {a.unit_id for a in answers if a.present})
    if cut:
        # A unit there on a noisy line, or at other line settings, looks like an absent one.
        print(
            f"unit ID(s) {', '.join(map(str, cut))}: bytes came back in their turn that are no whole "
            "answer (cut short or garbled): a unit there on a noisy line, loose wiring or other line "
            "settings? check them, then scan these IDs again"
        )
    for register_map in maps.values():
        print()
        print(map_text(register_map))
    print()
    for block in config_blocks(found, maps, args, one_device=scan.one_device):
        print(block)
        print()


def map_text(m: Any) -> str:
    """What `--map` found for one unit, as lines."""
    head = f"unit {m.unit_id} {m.table} {m.first}-{m.last}: "
    if m.not_supported:
        return head + f"the unit refuses reads of this table ({m.not_supported})"
    lines = [head + f"{m.readable_count} readable in {len(m.readable)} range(s), {m.requests} reads"]
    lines += [f"  readable  {a}-{b}" if a != b else f"  readable  {a}" for a, b in m.readable]
    lines += [f"  no answer {a}-{b} (a device that drops reads it cannot serve?)" for a, b in m.unanswered]
    lines += [f"  bad answer {a}-{b} ({m.misanswer}): not readable" for a, b in m.misanswered]
    if m.stopped_at is not None:
        lines.append(f"  stopped at {m.stopped_at} after {m.requests} reads: map a smaller range")
    return "\n".join(lines)


def _readable_addresses(answer: Any, register_map: Any, table: str, address: int) -> list[int]:
    if register_map is not None:
        return [a for a, _ in register_map.readable][:MAX_TAGS_PER_UNIT]
    return [address] if answer.outcome == "value" else []


def config_blocks(
    found: list[Any], maps: dict[int, Any], args: argparse.Namespace, *, one_device: bool = False
) -> list[str]:
    """The `[[devices]]` to paste: on TCP one device (one connection to the gateway) whose tags
    name their unit; on RTU one device per unit (devices on one port share it). Tags are placeholders
    (uint16) at addresses known to read: the register map gives names, types and scaling. A device
    with no address known to read is printed commented out (a device needs a tag). `one_device`:
    `found` is one device that ignores the unit ID, configured as unit 1."""
    kind = "bool" if args.table in ("coil", "discrete") else "uint16"
    if one_device:
        maps = {1: maps.get(found[0].unit_id)}
        found = [replace(found[0], unit_id=1)]

    def tag(unit_id: int, address: int, with_unit: bool) -> str:
        lines = ["[[devices.tags]]", f'name = "unit{unit_id}.{args.table}_{address}"']
        lines += [f"unit_id = {unit_id}"] if with_unit else []
        lines += [
            f'table = "{args.table}"',
            f"address = {address}",
            f'type = "{kind}"  # check the register map',
        ]
        return "\n".join(lines)

    def tags(answer: Any, with_unit: bool) -> list[str]:
        addresses = _readable_addresses(answer, maps.get(answer.unit_id), args.table, args.address)
        said = [f"# unit {answer.unit_id}: {answer.identity}"] if answer.identity else []
        return said + (
            [tag(answer.unit_id, a, with_unit) for a in addresses]
            or [
                f"# unit {answer.unit_id} answers, but no {args.table} address of it is known to read: take "
                f"its tags from its register map (or --units {answer.unit_id} --map 0-999)"
            ]
        )

    def device(keys: list[str], its_tags: list[str]) -> list[str]:
        block = "\n".join(["[[devices]]", *keys])
        if all(t.startswith("#") for t in its_tags):
            block = "\n".join(f"# {line}" for line in block.splitlines())
        return [block, *its_tags]

    blocks = ["# For the agent's config (names and types are placeholders: the register map has them):"]
    if args.host is not None:
        first = found[0].unit_id
        port = "" if args.port == DEFAULT_TCP_PORT else str(args.port)
        keys = [f'name = "{device_name("modbus", args.host, port)}"', 'kind = "modbus_tcp"',
                f'host = "{args.host}"', f"port = {args.port}", f"unit_id = {first}"]  # fmt: skip
        return blocks + device(keys, [t for a in found for t in tags(a, a.unit_id != first)])
    from water_edge.drivers.serial_names import port_to_configure

    # /dev/ttyUSB0 scanned, its /dev/serial/by-id/... name configured: a reboot cannot swap it
    line = port_to_configure(args.serial_port)
    for answer in found:
        name = device_name("rtu", PurePath(args.serial_port).name, f"unit{answer.unit_id}")
        keys = [
            f'name = "{name}"', 'kind = "modbus_rtu"', f'port = "{line}"',
            f"baudrate = {args.baudrate}", f'parity = "{args.parity}"', f"stopbits = {args.stopbits}",
            f"unit_id = {answer.unit_id}", *(["local_echo = true"] if args.local_echo else []),
        ]  # fmt: skip
        blocks += device(keys, tags(answer, False))
    return blocks


def device_name(kind: str, place: str, suffix: str = "") -> str:
    """`kind-place[-suffix]` as a device name the config takes (letters, digits and '-', at most
    NAME_MAX_LENGTH): a place too long for it is cut, and ends in a hash of the whole so that two
    long places still give two names."""
    from water_edge.core.names import NAME_MAX_LENGTH

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")

    head, tail = clean(kind), f"-{clean(suffix)}" if clean(suffix) else ""
    middle = clean(place)
    room = NAME_MAX_LENGTH - len(head) - len(tail) - 1
    if len(middle) > room:
        digest = hashlib.sha256(place.encode()).hexdigest()[:6]
        middle = f"{middle[: room - len(digest) - 1].rstrip('-')}-{digest}"
    return f"{head}-{middle}{tail}" if middle else f"{head}{tail}"
