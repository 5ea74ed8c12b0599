"""The exit codes and config default every `edge-agent` command shares (docs/operations.md)."""

from __future__ import annotations

import errno
import os
from typing import Final

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2  # bad arguments or a config that does not load
EXIT_INTERRUPTED: Final = 130  # Ctrl-C, as a shell reports a command ended by SIGINT
# `status`, as monitoring plugins count: ok, warning, critical.
EXIT_DEGRADED: Final = 1
EXIT_NOT_RUNNING: Final = 2
DEFAULT_CONFIG: Final = os.environ.get("EDGE_AGENT_CONFIG", "/etc/edge-agent/config.toml")


# What a write to a disk that is full or failing raises (a pipe whose reader left is EPIPE).
_OUTPUT_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG})


def output_failed(exc: BaseException) -> bool:
    """`exc` is, as far as can be told, the output (stdout) failing to be written: `edge-agent
    status > /dev/full`, a full SD card. An error about a file a command writes by name carries
    that name (`filename`: open(), `core.files.atomic_write`); one on stdout does not. The CLI's
    `main` says so in one line; a command's own `except OSError` is to let it through."""
    return isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS and exc.filename is None
