"""A failed network call in words a technician can act on: `cannot resolve host plc-x: Name or
service not known`, not `unknown error -2`.

`socket.gaierror` (name resolution) carries a negative EAI_* code that `os.strerror` does not know;
its own `strerror` does. Every other `OSError` is said with its `strerror`.
"""

from __future__ import annotations

import socket


def network_error(exc: OSError, host: str | None = None) -> str:
    """One short phrase for `exc`; `host` is named when the host itself is the problem."""
    if isinstance(exc, socket.gaierror):
        what = f"cannot resolve host {host}" if host else "cannot resolve the host name"
        return f"{what}: {exc.strerror or exc}"
    if exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
