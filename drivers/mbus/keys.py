"""A meter's key from the config (given inline or by secret reference), read when a driver opens."""

from __future__ import annotations

from water_edge.core.errors import AgentError
from water_edge.core.secrets import SecretRef, resolve_secret
from water_edge.drivers.mbus.crypto import MbusKeyError, parse_key


def load_key(ref: str | SecretRef | None) -> tuple[bytes | None, str | None]:
    """(the key, None), (None, None) without one, or (None, why it cannot be used): a missing
    file, a file others may read, an unset variable, not 32 hex digits. The reason names the
    reference, never the key."""
    if ref is None:
        return None, None
    try:
        text = resolve_secret(ref)
        return (None if text is None else parse_key(text)), None
    except (AgentError, MbusKeyError) as exc:
        return None, str(exc).splitlines()[0]
