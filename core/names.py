"""Name rules shared by every layer: what a device, tag, stream, site or gateway name may look like.

One rule, so a name the config accepts is always a valid MQTT topic level, file name and metric name.
"""

from __future__ import annotations

import re
from typing import Final

from water_edge.core.patterns import explained

# Letters, digits, `_`, `.` and `-`, starting with a letter or digit.
NAME_PATTERN: Final = explained(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
    "a name of letters, digits, '_', '.' and '-', starting with a letter or digit "
    "(no spaces, no '/', '+' or '#')",
)
# One MQTT topic level: no wildcards, no separator, no NUL; kept to what every broker accepts.
TOPIC_LEVEL_PATTERN: Final = explained(
    r"^[A-Za-z0-9_.:-]+$", "one MQTT topic level of letters, digits, '_', '.', ':' and '-'"
)
# A topic prefix may span levels ("utility/water") but never starts or ends with "/" or has empty
# levels.
TOPIC_PREFIX_PATTERN: Final = explained(
    r"^[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)*$",
    "topic levels of letters, digits, '_', '.', ':' and '-' joined by '/' (e.g. utility/water)",
)
NAME_MAX_LENGTH: Final = 64
_NAME: Final = re.compile(NAME_PATTERN)


def is_name(text: str) -> bool:
    """A name `NAME_PATTERN` accepts, at most `NAME_MAX_LENGTH` characters long (what the config
    takes for a gateway id or a site)."""
    return len(text) <= NAME_MAX_LENGTH and _NAME.match(text) is not None
