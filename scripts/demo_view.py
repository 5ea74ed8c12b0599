"""The demo's live view: what the centre receives (readings per device with their quality, events
as they arrive, the retained status) beside what the agent says about itself (uplink, buffer,
models), in one terminal.

On a terminal it is a `rich` live display redrawn twice a second. rich because it is the
well-kept library for this (tables, colour, in-place redraw, SVG export for the docs' screenshots)
and already in the dev environment (import-linter depends on it); hand-written ANSI would be more
code and worse on narrow terminals. Without a terminal (a pipe, a log, the test) it prints plain
lines: every event as it arrives, and a snapshot of every device every `snapshot_s` seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def fmt_value(value: Any) -> str:
    from water_edge.core import units

    return units.value(value)


@dataclass
class Latest:
    value: Any
    unit: str
    quality: str
    reason: str | None
    ts: int


@dataclass
class Device:
    name: str
    kind: str
    highlights: list[str]
    messages: int = 0
    readings: dict[str, Latest] = field(default_factory=dict)
    last_seq: int = 0
    seen: set[int] = field(default_factory=set)
    last_arrival: float = 0.0

    def counts(self) -> tuple[int, int]:
        good = sum(1 for r in self.readings.values() if r.quality == "good")
        return good, len(self.readings) - good

    def missing(self) -> int:
        """Messages of this stream the centre has not seen (a gap left by a reconnect, until the
        backlog arrives)."""
        return 0 if not self.seen else self.last_seq - len(self.seen)


@dataclass
class Arrived:
    at: float
    kind: str
    source: str
    severity: str
    text: str
    flaps: int = 0  # earlier driver_down/driver_up of the same source folded into this row
    since: float = 0.0


class LiveView:
    """Subscribes to the gateway's topics and asks its status socket; renders both."""

    def __init__(
        self,
        host: str,
        port: int,
        base_topic: str,
        devices: list[tuple[str, str, list[str]]],
        status_socket: Path,
        *,
        started: float | None = None,
        plant_clock: Callable[[], str] | None = None,
    ) -> None:
        self.base = base_topic
        self.devices = {name: Device(name, kind, highlights) for name, kind, highlights in devices}
        self.events: deque[Arrived] = deque(maxlen=9)
        self.all_events: list[dict[str, Any]] = []
        self.presence: dict[str, Any] = {}
        self.status: dict[str, Any] = {}
        self.status_error = ""
        self.started = started or time.monotonic()
        self.plant_clock = plant_clock
        self.status_socket = status_socket
        self._lock = threading.Lock()
        self._printed = 0  # events already printed in plain mode
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{base_topic}/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    # -- what arrives ---------------------------------------------------------------------------

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        stream = msg.topic.rsplit("/", 1)[-1]
        with self._lock:
            if stream == "status":
                self.presence = body
            elif stream == "events":
                for event in body.get("events") or []:
                    self.all_events.append(event)
                    self._show(
                        Arrived(
                            time.monotonic(),
                            event["kind"],
                            event["source"],
                            event["severity"],
                            describe(event),
                        )
                    )
            elif stream in self.devices and isinstance(body.get("readings"), list):
                device = self.devices[stream]
                device.messages += 1
                device.last_arrival = time.monotonic()
                seq = int(body.get("seq", 0))
                device.seen.add(seq)
                device.last_seq = max(device.last_seq, seq)
                for r in body["readings"]:
                    device.readings[r["tag"]] = Latest(
                        r["value"], r.get("unit", ""), r["quality"], r.get("reason"), r["ts"]
                    )

    def _show(self, new: Arrived) -> None:
        """A device going down and up again folds into one row, so it cannot push the other events
        out of view (every event still goes to `all_events` and to the plain output)."""
        flapping = {"driver_down", "driver_up"}
        last = self.events[-1] if self.events else None
        if last is not None and last.source == new.source and {last.kind, new.kind} <= flapping:
            new.flaps, new.since = last.flaps + 1, last.since or last.at
            self.events.pop()
        self.events.append(new)

    def poll_status(self) -> None:
        from water_edge.agent.status import AgentNotRunningError, request_status

        try:
            status = request_status(self.status_socket, timeout=2.0)
        except (AgentNotRunningError, OSError, ValueError) as exc:
            self.status_error = str(exc)
            return
        with self._lock:
            self.status, self.status_error = status, ""

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.all_events if e["kind"] == kind]

    # -- plain lines (no terminal) --------------------------------------------------------------

    def clock(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"t+{s // 60:02d}:{s % 60:02d}"

    def new_event_lines(self) -> list[str]:
        with self._lock:
            fresh = list(self.all_events[self._printed :])
            self._printed = len(self.all_events)
        return [f"{self.clock()}  EVENT  {event_line(e)}" for e in fresh]

    def snapshot_lines(self) -> list[str]:
        with self._lock:
            lines = [f"{self.clock()}  --- {self.header()}"]
            for device in self.devices.values():
                lines.append(f"{self.clock()}  {self.device_line(device)}")
            for proc in self.status.get("processors") or []:
                for text in proc.get("lines") or []:
                    lines.append(f"{self.clock()}  model {proc['name']}: {text}")
            uplink = (self.status.get("uplink") or {}).get("lines") or []
            buffer = (self.status.get("buffer") or {}).get("lines") or []
            if uplink:
                lines.append(f"{self.clock()}  uplink {uplink[0]}")
            if buffer:
                lines.append(f"{self.clock()}  buffer {buffer[0]}")
        return lines

    def header(self) -> str:
        plant = f"  plant clock {self.plant_clock()}" if self.plant_clock else ""
        state = self.presence.get("state", "?")
        return f"gateway {state}{plant}"

    def device_state(self, name: str) -> tuple[str, str]:
        for d in self.status.get("drivers") or []:
            if d["name"] == name:
                return d["state"], d.get("endpoint", "")
        return "?", ""

    def device_line(self, device: Device) -> str:
        state, _ = self.device_state(device.name)
        good, bad = device.counts()
        values = "  ".join(self.highlight(device, tag) for tag in device.highlights if tag in device.readings)
        missing = device.missing()
        gap = f"  waiting for {missing} messages" if missing > 0 else ""
        return f"{device.name:<13} {device.kind:<10} {state:<5} {good:>3} good {bad:>2} bad  {values}{gap}"

    @staticmethod
    def highlight(device: Device, tag: str) -> str:
        r = device.readings[tag]
        if r.quality != "good":
            return f"{tag}=- [{r.quality}: {r.reason}]"
        unit = f" {r.unit}" if r.unit else ""
        return f"{tag}={fmt_value(r.value)}{unit}"

    # -- rich (terminal) -------------------------------------------------------------------------

    def _events_table(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        events = Table(expand=True, box=None, show_header=False, pad_edge=False)
        events.add_column("when", style="dim", no_wrap=True)
        events.add_column("kind", no_wrap=True)
        events.add_column("what", ratio=1)
        for e in list(self.events)[::-1]:
            style = {"alarm": "bold red", "critical": "bold red", "warning": "yellow"}.get(e.severity, "")
            when = datetime.fromtimestamp(time.time() - (time.monotonic() - e.at)).strftime("%H:%M:%S")
            text = f"{e.source}: {e.text}"
            if e.flaps:
                first = datetime.fromtimestamp(time.time() - (time.monotonic() - e.since)).strftime(
                    "%H:%M:%S"
                )
                text += f"  (down/up {e.flaps + 1} times since {first})"
            events.add_row(when, Text(e.kind, style=style), text)
        return events

    def renderable(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            agent = self.status.get("agent") or {}
            verdict = (self.status.get("verdict") or {}).get("state", "…")
            title = Text.assemble(
                ("water-edge-agent demo", "bold"),
                f"   site {agent.get('site', '?')}  gateway {agent.get('gateway', '?')}   {self.clock()}",
                f"   plant clock {self.plant_clock()} (5x)" if self.plant_clock else "",
                "   agent ",
                (verdict, "green" if verdict == "ok" else "yellow"),
            )
            devices = Table(expand=True, box=None, pad_edge=False, show_edge=False)
            for column, style in (("device", "bold"), ("kind", "dim"), ("state", ""), ("readings", ""),
                                  ("latest values (as the centre received them)", "")):  # fmt: skip
                last = column.startswith("latest")
                devices.add_column(column, style=style, no_wrap=not last, ratio=1 if last else None)
            for device in self.devices.values():
                state, endpoint = self.device_state(device.name)
                good, bad = device.counts()
                counts = Text(f"{good} good")
                if bad:
                    counts.append(f" {bad} bad", style="red")
                values = Text()
                for tag in device.highlights:
                    if tag not in device.readings:
                        continue
                    r = device.readings[tag]
                    if values:
                        values.append("  ")
                    values.append(f"{tag} ", style="dim")
                    if r.quality == "good":
                        values.append(fmt_value(r.value) + (f" {r.unit}" if r.unit else ""))
                    else:
                        values.append(f"{r.quality}: {r.reason}", style="red")
                if device.missing() > 0:
                    values.append(f"  waiting for {device.missing()} messages", style="yellow")
                devices.add_row(
                    device.name,
                    f"{device.kind}\n{endpoint}" if endpoint and len(endpoint) < 32 else device.kind,
                    Text(state, style="green" if state == "up" else "red"),
                    counts,
                    values,
                )
            models = Table(expand=True, box=None, show_header=False, pad_edge=False)
            models.add_column("model", style="bold", no_wrap=True)
            models.add_column("state", ratio=1)
            for proc in self.status.get("processors") or []:
                for i, text in enumerate(proc.get("lines") or []):
                    models.add_row(proc["name"] if i == 0 else "", text)
            events = self._events_table()
            uplink = (self.status.get("uplink") or {}).get("lines") or ["…"]
            buffer = (self.status.get("buffer") or {}).get("lines") or ["…"]
            centre = self.presence.get("state", "?")
            error: list[str | tuple[str, str]] = (
                ["  ", (f"agent status: {self.status_error}", "red")] if self.status_error else []
            )
            link = Text.assemble(
                ("uplink  ", "bold"), uplink[0], "\n", ("buffer  ", "bold"), buffer[0], "\n",
                ("centre  ", "bold"), f"retained status {centre}",
                *error,
            )  # fmt: skip
        return Group(
            title,
            Panel(devices, title="devices", title_align="left"),
            Panel(models, title="models", title_align="left"),
            Panel(events or Text("none yet", style="dim"), title="events, newest first", title_align="left"),
            Panel(link, title="uplink and buffer", title_align="left"),
        )


def describe(event: dict[str, Any]) -> str:  # noqa: PLR0911 - one short answer per kind
    """An event's detail in one line a person reads."""
    d = event.get("detail") or {}
    kind = event["kind"]
    if kind == "pump_anomaly":
        top = max((s.get("score", 0) for s in d.get("signals") or []), default=event.get("score") or 0)
        return f"{d.get('explanation', '')} (score {top:.1f}, alarm level 1)"
    if kind in ("leak", "leak_warning"):
        bands = d.get("bands_risen") or []
        rise = max((b.get("rise_db", 0) for b in bands), default=0.0)
        where = ""
        position = d.get("position")
        if position:
            where = f", position {position['position_m']:.0f} m from {position.get('from_sensor', 'A')}"
        return f"{len(bands)} bands rose, up to {rise:.1f} dB over its quiet{where}"
    if kind == "meter_alarm":
        return f"{d.get('alarm')} {d.get('state')}"
    if kind == "driver_down":
        reason = str(d.get("reason") or "")
        prefix = f"{event['source']}: "
        return reason.removeprefix(prefix) or "down"
    if kind == "driver_up":
        return f"back after {d.get('down_for_s', 0):.0f} s"
    if kind in ("pump_anomaly_cleared", "leak_cleared"):
        return str(d.get("reason") or "cleared")
    if kind == "agent_started":
        return f"version {d.get('version', '')}"
    return ", ".join(f"{k}={v}" for k, v in list(d.items())[:3]) if d else event.get("severity", "")


def event_line(event: dict[str, Any]) -> str:
    return f"{event['kind']:<20} {event['source']:<16} {event['severity']:<8} {describe(event)}"
