"""The name of the release this process runs from, as the centre should see it.

Every build says `__version__` 0.1.0 until releases are numbered, so the version alone cannot
tell a fleet's builds apart. A gateway runs from a release virtualenv,
`/opt/edge-agent/releases/<version>-<id>` (install.sh: `<version>-install-<UTC time>`; a signed
bundle: `<version>-<manifest digest>`), and that directory's name is unique per build.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final


def running_release(prefix: str = sys.prefix) -> str | None:
    """The release directory's name when `prefix` (the virtualenv) is one, else None (a checkout)."""
    path = Path(prefix)
    return path.name if path.parent.name == "releases" and path.name else None


RELEASE: Final = running_release()  # this process's; None when run from a checkout
