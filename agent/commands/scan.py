"""`edge-agent scan mbus|modbus|opcua`: find what a device has, to commission it, and print the config
to paste.

`scan mbus --port P [--baudrate B] [--primary [FIRST-LAST]] [--json]`: the meters on a wired M-Bus
segment.

A secondary-address scan (a wildcard search over the 8 ID digits, EN 13757-3 annex) finds every
meter that takes selection, whatever its primary address (meters leave the factory at 0); each one
found is then read once for its identity and current volume. `--primary` also tries primary
addresses 0..250 one by one (about a minute at 2400 Bd, five at 300 Bd) for old meters without
secondary addressing; `--primary 1-20` tries only those. Encrypted meters are found and named
without their keys (the header is never encrypted); their volume needs the key. The result ends
with `[[devices.meters]]` blocks to paste into the agent's config.

Stop the agent first (`systemctl stop edge-agent`) if it polls this port: two masters on one bus
collide. Exit 0 when meters were found, 1 when none answered, 2 when the port cannot be used.

`scan modbus`: the unit IDs that answer on a Modbus TCP address or an RTU line, and which
addresses they read (`agent.commands._scan_modbus`).

`scan opcua --endpoint URL [--path P] [--depth N] [--limit N] [security options] [--json]`: the
variables of an OPC UA server below Objects (or below `--path`, a browse path), with their current
value, type and unit, and `[[devices.tags]]` to paste (by browse path; `--json` also gives each
one's NodeId by namespace URI). The standard's own nodes (the Server object) are left out. Exit 0
when variables were found, 1 when none, 2 when the server cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from water_edge.agent.commands._exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "scan",
        help="find the meters on an M-Bus segment, the units of a Modbus line, an OPC UA server's variables",
    )
    kinds = parser.add_subparsers(dest="scan_kind", required=True)

    def kind(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = kinds.add_parser(
            name, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        return sub

    mbus = kind("mbus", "find every meter on a wired M-Bus segment")
    mbus.add_argument("--port", required=True, help="the M-Bus master's serial port, e.g. /dev/ttyUSB0")
    mbus.add_argument("--baudrate", type=int, choices=(300, 2400, 9600), default=2400)
    mbus.add_argument(
        "--all-baudrates",
        action="store_true",
        help="scan at --baudrate, then the other speeds (a segment of mixed speeds)",
    )
    mbus.add_argument(
        "--primary",
        nargs="?",
        const="0-250",
        default=None,
        type=_primary_addresses,
        metavar="FIRST-LAST",
        help="also try primary addresses one by one (old meters): 0-250 when no range is given",
    )
    mbus.add_argument("--local-echo", action="store_true", help="the adapter echoes every request")
    mbus.add_argument("--json", action="store_true", help="one JSON object per meter")
    mbus.set_defaults(func=cmd_scan_mbus)

    from water_edge.agent.commands import _scan_modbus as scan_modbus

    scan_modbus.add_arguments(
        kind("modbus", "find the unit IDs that answer on a Modbus TCP address or RTU line")
    )

    opcua = kind("opcua", "list an OPC UA server's variables")
    opcua.add_argument("--endpoint", required=True, help="opc.tcp://host:port[/path]")
    opcua.add_argument("--path", default="", help="a browse path below Objects to start at, e.g. PumpStation")
    opcua.add_argument("--depth", type=int, default=8, help="levels of objects to walk (default 8)")
    opcua.add_argument("--limit", type=int, default=2000, help="variables at most (default 2000)")
    opcua.add_argument(
        "--security-policy",
        default="None",
        choices=("None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"),
    )
    opcua.add_argument("--security-mode", default=None, choices=("Sign", "SignAndEncrypt"))
    opcua.add_argument("--certificate", help="the gateway's client certificate (with a policy)")
    opcua.add_argument("--private-key", help="its private key")
    opcua.add_argument("--server-certificate", help="pin the server's certificate")
    opcua.add_argument("--username", help="user identity (anonymous without)")
    opcua.add_argument("--password-file", help="a file holding the password (never on the command line)")
    opcua.add_argument("--json", action="store_true", help="one JSON object per variable")
    opcua.set_defaults(func=cmd_scan_opcua)


def _primary_addresses(text: str) -> range:
    """`--primary 1-20` (or one address, `--primary 5`): the primary addresses to try, within
    0..250; an argparse error naming what was expected otherwise."""
    from water_edge.drivers.mbus.frame import MAX_PRIMARY

    first, _, last = text.partition("-")
    try:
        low, high = int(first), int(last or first)
    except ValueError:
        why = f"{text!r} is no address range: give FIRST-LAST, e.g. 1-20"
        raise argparse.ArgumentTypeError(why) from None
    if not 0 <= low <= high <= MAX_PRIMARY:
        raise argparse.ArgumentTypeError(
            f"{text!r}: primary addresses are 0..{MAX_PRIMARY}, the first no greater than the last"
        )
    return range(low, high + 1)


def cmd_scan_mbus(args: argparse.Namespace) -> int:
    from water_edge.core import logs
    from water_edge.core.errors import DriverIOError

    logs.configure("warning", json=False)
    speeds = [args.baudrate]
    if args.all_baudrates:
        speeds += [b for b in (2400, 9600, 300) if b != args.baudrate]
    started = time.monotonic()
    try:
        found = _scan_segment(args, speeds)
    except DriverIOError as exc:
        _say(f"edge-agent scan mbus: {exc}")
        return EXIT_USAGE
    elapsed = time.monotonic() - started
    if not found:
        tried = "/".join(str(b) for b in speeds)
        _say(
            f"no meter answered at {tried} Bd in {elapsed:.0f} s: check the wiring and the bus power, "
            "try --all-baudrates (meters ship at 2400 or 300), --primary for old meters, and that no "
            "other master (the agent) uses the port"
        )
        return EXIT_FAILED
    docs = [_meter_doc(m, baud) for m, baud in found]
    if args.json:
        _print_json(docs)
    else:
        _print_table(docs, args, elapsed)
    return EXIT_OK


def _scan_segment(args: argparse.Namespace, speeds: list[int]) -> list[tuple[Any, int]]:
    """Each meter found, with the speed it answered at (the first, for one that answers at several:
    many meters detect the master's speed)."""
    from water_edge.drivers.mbus.frame import MbusDecodeError
    from water_edge.drivers.mbus.link import MbusMaster, MbusTimeoutError

    master = MbusMaster(args.port, speeds[0], retries=1, local_echo=args.local_echo)
    found: list[tuple[Any, int]] = []
    master.open()
    try:
        for baud in speeds:
            master.use_baudrate(baud)
            _say(f"scanning {args.port} at {baud} Bd by secondary address ...")
            seen = {m.secondary for m, _ in found}
            for secondary in master.scan_secondary():
                if not secondary:
                    _say(
                        "a meter answered its selection without a long header (it names no ID): try --primary"
                    )
                    continue
                if secondary in seen:
                    continue
                try:
                    found.append((master.identify(secondary), baud))
                except (MbusTimeoutError, MbusDecodeError) as exc:
                    _say(f"{secondary}: found, but its telegram could not be read: {exc}")
            if args.primary is None:
                continue
            addresses: range = args.primary
            _say(f"trying primary addresses {addresses[0]}..{addresses[-1]} at {baud} Bd ...")
            known = {m.primary for m, b in found if b == baud}
            for address in master.scan_primary(addresses):
                if address in known:
                    continue
                try:
                    meter = master.identify_primary(address)
                except (MbusTimeoutError, MbusDecodeError) as exc:
                    _say(f"primary address {address}: answers, but its telegram could not be read: {exc}")
                    continue
                if not meter.secondary or meter.secondary not in {m.secondary for m, _ in found}:
                    found.append((meter, baud))
    finally:
        master.close()
    return found


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _meter_doc(m: Any, baudrate: int) -> dict[str, Any]:
    h = m.header
    return {
        "secondary": m.secondary or None,
        "baudrate": baudrate,
        "id": h.id if h else None,
        "primary": m.primary,
        "manufacturer": h.manufacturer if h else None,
        "version": h.version if h else None,
        "medium": h.medium_name if h else None,
        "encrypted_mode": m.security_mode or None,
        "volume_m3": m.volume_m3,
    }


def _print_json(docs: list[dict[str, Any]]) -> None:
    import orjson

    for d in docs:
        sys.stdout.write(orjson.dumps(d).decode() + "\n")


def _print_table(docs: list[dict[str, Any]], args: argparse.Namespace, elapsed: float) -> None:
    speeds = [d["baudrate"] for d in docs]
    device_baud = max(set(speeds), key=speeds.count)  # the segment's; the others per meter
    where = f"{device_baud} Bd" if len(set(speeds)) == 1 else "mixed speeds"
    print(f"M-Bus {args.port} at {where}: {len(docs)} meter(s) in {elapsed:.0f} s")
    print(
        f"{'primary':>7}  {'secondary':<16}  {'baud':>4}  {'manufacturer':<12}  {'version':>7}  "
        f"{'medium':<12}  volume"
    )
    for d in docs:
        volume = f"{d['volume_m3']:g} m3" if d["volume_m3"] is not None else ""
        if d["encrypted_mode"]:
            volume = f"encrypted (mode {d['encrypted_mode']}): needs its key"
        version = "" if d["version"] is None else f"0x{d['version']:02X}"
        print(
            f"{d['primary']:>7}  {d['secondary'] or '-':<16}  {d['baudrate']:>4}  "
            f"{d['manufacturer'] or '-':<12}  {version:>7}  {d['medium'] or '-':<12}  {volume}"
        )
    print()
    from water_edge.drivers.serial_names import port_to_configure

    # /dev/ttyUSB0 scanned, its /dev/serial/by-id/... name configured: a reboot cannot swap it
    port = port_to_configure(args.port)
    print(f'# For the agent\'s config: a [[devices]] with kind = "mbus", port = "{port}", '
          f"baudrate = {device_baud}{', local_echo = true' if args.local_echo else ''}")  # fmt: skip
    for d in docs:
        print()
        print(config_block(d, device_baud))


def config_block(d: dict[str, Any], device_baud: int) -> str:
    """The `[[devices.meters]]` table for one meter found (by its full secondary address, which
    does not depend on the primary addresses set on the bus; its speed where not the segment's)."""
    lines = ["[[devices.meters]]", f'name = "meter-{d["id"] or d["primary"]}"']
    if d["secondary"]:
        where = f"{d['manufacturer']} {d['medium']}, primary address {d['primary']}"
        lines.append(f'secondary = "{d["secondary"]}"  # {where}')
    else:
        lines.append(f"address = {d['primary']}")
    if d["baudrate"] != device_baud:
        lines.append(f"baudrate = {d['baudrate']}  # this meter's own speed on a segment of mixed speeds")
    if d["encrypted_mode"]:
        path = f"/etc/edge-agent/keys/meter-{d['id']}.key"
        lines.append(f'key = {{ file = "{path}" }}  # its AES-128 key, 32 hex digits (chmod 600)')
    return "\n".join(lines)


def cmd_scan_opcua(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from water_edge.agent.commands._interrupt import run_until_interrupted
    from water_edge.core import logs
    from water_edge.core.errors import DriverIOError
    from water_edge.drivers.opcua.config import OpcUaConfig
    from water_edge.drivers.opcua.driver import OpcUaDriver

    logs.configure("error", json=False)  # the command says what went wrong; asyncua's own lines add nothing
    secure = args.security_policy != "None"
    settings: dict[str, Any] = {
        "name": "scan",
        "kind": "opcua",
        "endpoint": args.endpoint,
        "mode": "poll",
        # the driver reads its tags at connect; the server's clock is on every server (i=2258)
        "tags": [{"name": "server_time", "node": "i=2258"}],
        "security_policy": args.security_policy,
        "security_mode": (args.security_mode or "SignAndEncrypt") if secure else "None",
    }
    for key in ("certificate", "private_key", "server_certificate", "username"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.password_file is not None:
        settings["password"] = {"file": args.password_file}
    try:
        driver = OpcUaDriver(OpcUaConfig.model_validate(settings))
    except ValidationError as exc:
        _say(f"edge-agent scan opcua: {exc.errors()[0]['msg']}")
        return EXIT_USAGE
    started = time.monotonic()
    below = "/".join(["Objects", *([args.path.strip("/")] if args.path.strip("/") else [])])
    _say(f"browsing {args.endpoint} below {below} ...")
    try:
        found, truncated = run_until_interrupted(_browse(driver, args))
    except DriverIOError as exc:
        _say(f"edge-agent scan opcua: {exc}")
        return EXIT_USAGE
    if not found:
        _say("no variables found there (a deeper --depth, another --path?)")
        return EXIT_FAILED
    if truncated:
        _say(f"stopped at --limit {args.limit}: give a --path or a larger --limit for the rest")
    if args.json:
        import orjson

        for v in found:
            doc = {"path": v.path, "node": v.node, "type": v.data_type, "value": v.value,
                   "quality": v.quality, "unit": v.unit}  # fmt: skip
            sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return EXIT_OK
    _print_variables(found, args, time.monotonic() - started)
    return EXIT_OK


async def _browse(driver: Any, args: argparse.Namespace) -> tuple[list[Any], bool]:
    await driver.open()
    try:
        result: tuple[list[Any], bool] = await driver.browse(args.path, depth=args.depth, limit=args.limit)
        return result
    finally:
        await driver.aclose()


def _print_variables(found: list[Any], args: argparse.Namespace, elapsed: float) -> None:
    print(f"OPC UA {args.endpoint}: {len(found)} variable(s) in {elapsed:.0f} s")
    width = max(len(v.path or v.node) for v in found)
    for v in found:
        value = v.reason if v.quality == "bad" else v.value
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        print(f"{v.path or v.node:<{width}}  {v.data_type or '-':<10}  {shown:<16.16}  {v.unit}")
    print()
    print(f'# For the agent\'s config: a [[devices]] with kind = "opcua", endpoint = "{args.endpoint}"')
    names: set[str] = set()
    start = args.path.strip("/")
    for v in found:
        print()
        print(tag_block(v, start, names))


def tag_block(v: Any, start: str, names: set[str]) -> str:
    """The `[[devices.tags]]` table for one variable: named after its path below `start`
    (`Pump1/DischargePressure` -> `pump1.discharge_pressure`), unique among `names`."""
    relative = (v.path or v.node)[len(start) :].strip("/") if v.path else v.node
    name = ".".join(_snake(part) for part in relative.split("/") if part) or "value"
    unique, n = name, 2
    while unique in names:
        unique, n = f"{name}_{n}", n + 1
    names.add(unique)
    lines = ["[[devices.tags]]", f'name = "{unique}"']
    lines.append(f'path = "{v.path}"' if v.path else f'node = "{v.node}"')
    return "\n".join(lines)


def _snake(part: str) -> str:
    import re

    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", part).lower()
    text = re.sub(r"[^a-z0-9_.-]+", "_", text).strip("_.-")
    return text or "x"
