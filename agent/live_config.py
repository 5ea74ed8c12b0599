"""What a new config changes in the running agent, and whether that can be applied without a restart.

A `config_update` used to restart the agent whatever it changed. Restarting closes the outbox,
drops the broker connection and reopens every device: harmless, but it costs a reconnect and a
gap in polling for a change that may only be a poll rate. `plan_changes` compares the running
config with the new one, key by key, and sorts each difference into what the running agent can
take as it is (`live`) and what needs a restart (`restart`); the agent applies a plan only when its
`restart` part is empty, so a mixed change is a restart, never half live.

Live today: a polled device's `poll_interval_ms` (its runner reschedules at once); for a streaming
driver (OPC UA, audio, wireless M-Bus) the rate lives in the driver, so it is a restart. Everything else is a
restart, on purpose: the log level (structlog caches loggers at their first use), the uplink and
buffer (they own the connection and the database), security (keys and rights are bound into the
command processor), drivers' connection settings and the models (their processors load at start).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from water_edge.agent.config.load import Config

# Config fields that are not settings: where the file was read from, what the loader warned about
# (its texts name the file: a config_update's candidate is another file than the live one).
_NOT_SETTINGS = frozenset({"source", "devices", "warnings"})
_LIVE_DEVICE_KEYS = {"poll_interval_ms"}


@dataclass(frozen=True)
class ConfigPlan:
    """The differences between two configs: `live` and `restart` as `key: old -> new` texts (no
    values for sections, which may hold secrets), `poll_intervals` the new rate by device name."""

    live: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    poll_intervals: Mapping[str, int] = field(default_factory=dict)

    @property
    def needs_restart(self) -> bool:
        return bool(self.restart)

    @property
    def unchanged(self) -> bool:
        return not self.live and not self.restart


def plan_changes(old: Config, new: Config, *, streaming: frozenset[str] = frozenset()) -> ConfigPlan:
    """Sort every difference between `old` (running) and `new` into live and restart; `streaming`
    names the devices whose driver streams (its poll rate is the driver's own)."""
    restart = [
        f.name
        for f in dataclasses.fields(Config)
        if f.name not in _NOT_SETTINGS and getattr(old, f.name) != getattr(new, f.name)
    ]
    live: list[str] = []
    polls: dict[str, int] = {}
    before = {d.name: d for d in old.devices}
    after = {d.name: d for d in new.devices}
    if list(before) != list(after):
        restart.append("devices (added, removed or reordered)")
    else:
        for name, device in after.items():
            was = before[name]
            if was.model_dump(exclude=_LIVE_DEVICE_KEYS) != device.model_dump(exclude=_LIVE_DEVICE_KEYS):
                restart.append(f"devices[{name}]")
            elif (old_ms := was.poll_interval_ms) != (new_ms := device.poll_interval_ms):
                if name in streaming:
                    restart.append(f"devices[{name}].poll_interval_ms (a streaming driver)")
                    continue
                live.append(f"devices[{name}].poll_interval_ms: {old_ms} -> {new_ms}")
                polls[name] = new_ms
    return ConfigPlan(tuple(live), tuple(restart), polls)
