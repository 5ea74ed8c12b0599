"""Name rules shared by every layer: what a device, tag, stream, site or gateway name may look like.

One rule, so a name the config accepts is always a valid MQTT topic level, file name and metric name.
"""

from __future__ import annotations

from typing import Final

# Letters, digits, `_`, `.` and `-`, starting with a letter or digit.
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
