"""Secrets by reference for the daemon's own sections; the type lives in `core.secrets` so that
drivers (a wireless meter's AES key) can take the same `{ file = ... }` / `{ env = ... }` forms."""

from __future__ import annotations

from water_edge.core.secrets import Secret, SecretRef, resolve_secret

__all__ = ["Secret", "SecretRef", "resolve_secret"]
