"""The security audit log: one JSON line per security-relevant decision, in the state dir, mode 0600.

Each line is flushed and fsynced before the decision takes effect, so a command or PLC write that
happened is always on record. Values that may be secret (command args, configs) are never written,
only their digests.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import structlog

from water_edge.core.reading import now_ns

log = structlog.get_logger(__name__)


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        self._fd = fd
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def record(self, action: str, outcome: str, **fields: Any) -> None:
        """Append `{ts, action, outcome, ...fields}`; `outcome` is ok, refused, failed or mismatch."""
        entry = {"ts": now_ns(), "action": action, "outcome": outcome, **fields}
        line = orjson.dumps(entry, default=str) + b"\n"
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)
            self.counts[f"{action}.{outcome}"] += 1
        level = log.info if outcome in ("ok", "accepted") else log.warning
        level("audit", action=action, outcome=outcome, **fields)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every entry of an audit log file (for `edge-agent` tooling and tests)."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
