"""Ctrl-C in tests run as a background job (`make test &`), which inherit SIGINT ignored."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def ctrl_c_delivered() -> Iterator[None]:
    """SIGINT handled as in a terminal's foreground for the block: this process raises
    KeyboardInterrupt, and a child started in it begins with SIGINT at its default (a handler,
    unlike SIG_IGN, is reset on exec). Ignored again afterwards if it was."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
