"""`edge-agent probe`: one read of one or more devices from the command line, for commissioning.

    edge-agent probe -c /etc/edge-agent/config.toml ps07-plc      # a device of the real config
    edge-agent probe --devices devices.toml                        # just [[devices]] sections
    edge-agent probe -c config.toml wmeters --listen 120           # every wireless meter in range

Nothing is buffered or published; the agent need not be stopped (a PLC that allows a single
connection is the exception: stop the agent first). Exit 0 when every reading is good, 1 when
any is not or a device cannot be reached, 2 for a bad config.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson

from water_edge.agent.commands._interrupt import run_until_interrupted
from water_edge.core import units
from water_edge.core.cli_numbers import number
from water_edge.core.errors import AgentError, ConfigError
from water_edge.core.reading import Reading
from water_edge.core.toml_text import NotUtf8TextError, TOMLDecodeError, parse_toml, read_toml_text

DEFAULT_CONFIG_HINT = os.environ.get("EDGE_AGENT_CONFIG", "/etc/edge-agent/config.toml")


def register(sub: Any) -> None:
    parser = sub.add_parser("probe", help="read devices once, now, and print what came back")
    parser.add_argument("devices", nargs="*", help="device names (default: all in the file)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("-c", "--config", help="the agent's config file")
    source.add_argument(
        "--devices-file", dest="devices_file", help="a TOML file holding only [[devices]] sections"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per reading (exact values)")
    parser.add_argument("--raw", action="store_true", help="exact values instead of the tag's precision")
    parser.add_argument(
        "--listen",
        type=number(above=0),
        metavar="SECONDS",
        help="receivers that hear meters on their own (wmbus): listen this long and list every meter "
        "heard, configured or not (commissioning)",
    )
    parser.set_defaults(func=run)


@runtime_checkable
class Listening(Protocol):
    """A driver that hears devices on their own schedule and can say which (the wmbus driver)."""

    async def listen_readings(self, seconds: float) -> list[Reading]: ...

    def heard(self) -> Sequence[Any]: ...


def _device_configs(args: argparse.Namespace) -> list[Any]:
    from water_edge.agent.config.load import load_config, validate_devices

    if args.devices_file:
        path = Path(args.devices_file)
        try:
            raw = parse_toml(read_toml_text(path))
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
        except NotUtf8TextError as exc:
            raise ConfigError([f"{path}: {exc}"]) from exc
        except TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
        devices = validate_devices(path, raw.get("devices", []))
    else:
        devices = list(load_config(args.config or DEFAULT_CONFIG_HINT).devices)
    if args.devices:
        known = {d.name for d in devices}
        unknown = [name for name in args.devices if name not in known]
        if unknown:
            source = args.devices_file or args.config or DEFAULT_CONFIG_HINT
            raise UnknownDeviceError(
                f"no device named {', '.join(map(repr, unknown))} in {source}; "
                f"its devices: {', '.join(sorted(known)) or 'none'}"
            )
        devices = [d for d in devices if d.name in args.devices]
    return devices


class UnknownDeviceError(Exception):
    """A device name on the command line that the config does not have (usage, not a config error)."""


async def _probe(
    device: Any, listen_s: float | None
) -> tuple[list[Reading], str | None, Sequence[Any] | None]:
    """The device's readings, or the error that stopped them, and what a receiver heard while it
    listened (None for a device that does not listen: it is read once, `--listen` or not)."""
    from water_edge.drivers import registry

    if listen_s is not None and getattr(device, "listen", None) is False:
        # Commissioning: every meter in range decoded as far as it can be without its key (whether
        # it is encrypted, its volume if plain), not only those the device is configured to hear.
        device = device.model_copy(update={"listen": True})
    driver = registry.build(device.kind, device)
    try:
        await driver.open()
        if listen_s is not None and isinstance(driver, Listening):
            readings = await driver.listen_readings(listen_s)
            return readings, None, driver.heard()
        return await driver.read(), None, None
    except AgentError as exc:
        return [], str(exc), None
    finally:
        await driver.aclose()


def _yes_no(known: bool | None) -> str:
    return "?" if known is None else "yes" if known else "no"


def _print_heard(device: Any, heard: Sequence[Any], as_json: bool) -> None:
    """The meters a receiver heard: what a technician compares with the meter list and the keys."""
    if as_json:
        for h in heard:
            doc = {
                "device": device.name, "heard": h.ident, "manufacturer": h.manufacturer,
                "device_type": h.device_type, "frames": h.frames, "rssi": h.rssi, "rssi_unit": h.rssi_unit,
                "encrypted": h.encrypted, "configured": h.configured, "total_volume_m3": h.total_volume_m3,
                "received": h.reception.received, "lost": h.reception.lost,
                "receivers": {
                    name: {"rssi": by.rssi, "rssi_unit": by.rssi_unit, "received": by.reception.received,
                           "lost": by.reception.lost}
                    for name, by in h.receivers.items()
                },
            }  # fmt: skip
            sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return
    several = len(getattr(device, "receivers", ())) > 1
    print(f"{device.name}: {len(heard)} meter(s) heard (lost: telegrams missed, from access-number gaps)")
    head = ("id", "man", "type", "frames", "lost", "rssi", "encrypted", "volume m3", "configured")
    print(
        "  {:<10} {:<4} {:>4} {:>6} {:>5} {:>7} {:<9} {:>12} {:<12}".format(*head)
        + (" heard by (rssi, lost)" if several else "")
    )
    for h in heard:
        rssi = "" if h.rssi is None else f"{h.rssi:.1f}{'' if h.rssi_unit else UNCALIBRATED}"
        volume = "" if h.total_volume_m3 is None else f"{h.total_volume_m3:.3f}"
        configured = h.configured or "-"
        line = (
            f"  {h.ident:<10} {h.manufacturer:<4} {h.device_type:>4} {h.frames:>6} {h.reception.lost:>5} "
            f"{rssi:>7} {_yes_no(h.encrypted):<9} {volume:>12} {configured:<12}"
        )
        if several:
            line += " " + ", ".join(_heard_by(name, by) for name, by in h.receivers.items())
        print(line.rstrip())
    levels = [h.rssi_unit for h in heard if h.rssi is not None]
    levels += [by.rssi_unit for h in heard for by in h.receivers.values() if by.rssi is not None]
    if "" in levels:
        print(f"  rssi in dBm; {UNCALIBRATED}: rtl_wmbus's own level, comparable only with its own")


UNCALIBRATED = "*"


def _heard_by(name: str, by: Any) -> str:
    level = "" if by.rssi is None else f" {by.rssi:.1f}{'' if by.rssi_unit else UNCALIBRATED}"
    return f"{name}{level} (lost {by.reception.lost})"


def _print(device: Any, readings: list[Reading], error: str | None, as_json: bool, raw: bool = False) -> None:
    where = device.endpoint_text()
    if error is not None:
        if as_json:
            sys.stdout.write(orjson.dumps({"device": device.name, "error": error}).decode() + "\n")
        else:
            print(
                units.printable(
                    f"{device.name} ({device.kind}{', ' + where if where else ''}): UNREACHABLE: {error}"
                )
            )
        return
    if not as_json:
        _print_table(device, readings, raw)
        return
    for r in readings:
        if as_json:
            out = {
                "device": device.name,
                "tag": r.tag,
                "value": r.value,
                "unit": r.unit,
                "quality": r.quality,
                "reason": r.reason,
                "ts": r.ts_ns,
            }
            sys.stdout.write(orjson.dumps(out).decode() + "\n")


def _print_table(device: Any, readings: list[Reading], raw: bool) -> None:
    """Columns sized to what came back: tag, value (at the tag's precision), unit, quality, reason."""
    where = device.endpoint_text()
    when = f" at {units.timestamp(max(r.ts_ns for r in readings))}" if readings else ""
    print(f"{device.name} ({device.kind}{', ' + where if where else ''}): {len(readings)} readings{when}")
    rows = [
        (
            r.tag,
            repr(r.value) if raw and isinstance(r.value, float) else units.value(r.value),
            r.unit,
            r.quality,
            r.reason or "",
        )
        for r in readings
    ]
    if not rows:
        return
    tag_w, value_w, unit_w, quality_w = (max(len(row[i]) for row in rows) for i in range(4))
    for tag, value, unit, quality, reason in rows:
        line = f"  {tag:<{tag_w}}  {value:>{value_w}} {unit:<{unit_w}}  {quality:<{quality_w}}  {reason}"
        print(units.printable(line.rstrip()))


def run(args: argparse.Namespace) -> int:
    from water_edge.agent.config.example import UntouchedExampleError
    from water_edge.agent.config.load import StateFilesClosedError
    from water_edge.core import logs

    logs.configure("warning")  # stdout carries the readings; driver logs go to stderr
    try:
        devices = _device_configs(args)
    except UnknownDeviceError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2
    except (StateFilesClosedError, UntouchedExampleError):
        raise  # the CLI says it in one line: who may look at the state files; what to edit
    except ConfigError as exc:
        print("invalid configuration:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return 2
    if not devices:
        print("edge-agent: no devices to probe", file=sys.stderr)
        return 2
    all_good = True
    for device in devices:
        readings, error, heard = run_until_interrupted(_probe(device, args.listen))
        if heard is not None:
            _print_heard(device, heard, args.json)
            all_good = all_good and bool(heard)
            continue
        _print(device, readings, error, args.json, args.raw)
        all_good = all_good and error is None and all(r.quality == "good" for r in readings)
    return 0 if all_good else 1
