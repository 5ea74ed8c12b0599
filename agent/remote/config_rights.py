"""What a config_update changes that needs more than the `config_update` right, found as a diff.

A key allowed `config_update` may change the ordinary settings (devices' polling and tags,
models, buffer, log, ...). Three kinds of change each need their own right, listed per operator
as `config_rights`:

- `security`: `[security]` (operators, their rights, limits, identity, audit and nonce files),
  `gateway.state_dir` (moving it would start an empty nonce store and a new audit log),
  `buffer.path` and `status.socket` (files the agent moves aside or replaces where they are named:
  pointed at the nonce store, the device key or the config itself, they would remove it),
  `status.group` (which local users may open the status socket), `status.metrics`,
  `status.metrics_tls` and `status.metrics_auth` (who on the network may read the gateway's
  devices and state),
  `[update]` (which release keys the agent checks bundles with, where its releases live), and
  any `[[devices]]` table with a secret reference (`{ file = ... }`, `{ env = ... }`) that is
  added or changed (the device would send what the reference names, say the device key, the claim
  key or the MQTT password, as its password to a server the key chose);
- `writes`: `[writes]`, and any `[[devices]]` table a write rule names (pointing a device named in
  the allow-list at another PLC would redirect the allowed writes there);
- `uplink`: where the data goes, by which way and as whom (`host`, `port`, `servers`, `protocol`,
  `prefix`, `client_id`, `username`, `password`, `tls`, `transport`, `websocket_path`,
  `websocket_headers`, `proxy`, `proxy_password`, and Sparkplug's `group_id` and `edge_node_id`):
  a proxy of the key's choosing would see every connection, and without TLS every reading, and
  `proxy_password = { file = ... }` would send the file it names (the device key) to that proxy.

Without the right the whole update is refused and nothing changes; the reason names every key
that needed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from water_edge.agent.secrets import SecretRef, secret_fields

UPLINK_DESTINATION = (
    "host", "port", "servers", "protocol", "prefix", "client_id", "username", "password", "tls",
    "transport", "websocket_path", "websocket_headers", "proxy", "proxy_password",
)  # fmt: skip
SPARKPLUG_IDENTITY = ("group_id", "edge_node_id")


def changes_needing_rights(old: Any, new: Any) -> dict[str, list[str]]:
    """Right -> the keys `new` changes relative to `old` that need it (empty lists left out)."""
    needed = {
        "security": _security_changes(old, new),
        "writes": _writes_changes(old, new),
        "uplink": _uplink_changes(old, new),
    }
    return {right: keys for right, keys in needed.items() if keys}


def _security_changes(old: Any, new: Any) -> list[str]:
    sections = {
        "[security]": (old.security, new.security),
        "gateway.state_dir": (old.gateway.state_dir, new.gateway.state_dir),
        "buffer.path": (old.buffer.path, new.buffer.path),
        "status.socket": (old.status.socket, new.status.socket),
        "status.group": (old.status.group, new.status.group),
        "status.metrics": (old.status.metrics, new.status.metrics),
        "status.metrics_tls": (old.status.metrics_tls, new.status.metrics_tls),
        "status.metrics_auth": (old.status.metrics_auth, new.status.metrics_auth),
        "[update]": (old.update, new.update),
    }
    keys = [key for key, (was, now) in sections.items() if was != now]
    old_devices = {d.name: d for d in old.devices}
    for device in new.devices:
        reads_secret = any(isinstance(secret, SecretRef) for secret in secret_fields(device))
        if reads_secret and old_devices.get(device.name) != device:
            keys.append(f"devices ({device.name}: a secret reference)")
    return keys


def _writes_changes(old: Any, new: Any) -> list[str]:
    keys = ["[writes]"] if old.writes != new.writes else []
    written = {rule.device for rule in (*old.writes.allow, *new.writes.allow)}
    old_devices = {d.name: d for d in old.devices}
    new_devices = {d.name: d for d in new.devices}
    return keys + [
        f"devices ({name})" for name in sorted(written) if old_devices.get(name) != new_devices.get(name)
    ]


def _uplink_changes(old: Any, new: Any) -> list[str]:
    changed = [key for key in UPLINK_DESTINATION if getattr(old.uplink, key) != getattr(new.uplink, key)]
    return [f"uplink.{key}" for key in changed] + [
        f"uplink.sparkplug.{key}"
        for key in SPARKPLUG_IDENTITY
        if getattr(old.uplink.sparkplug, key, None) != getattr(new.uplink.sparkplug, key, None)
    ]


def missing_rights(needed: Mapping[str, list[str]], granted: frozenset[str]) -> str | None:
    """Why the update is refused (every key and the right it needs), or None if it is allowed."""
    missing = [
        f"{', '.join(keys)} (needs the '{right}' right)"
        for right, keys in needed.items()
        if right not in granted
    ]
    return "; ".join(missing) if missing else None
