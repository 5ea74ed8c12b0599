"""Recognising the example config that deploy/install.sh wrote and nobody has edited yet.

The shipped example (deploy/config.example.toml) validates as it stands: it names a site, a
gateway, two brokers and a Modbus TCP device at 10.20.7.10:502, an address that may well exist on a
plant network. On a fresh install, install.sh copies it to /etc/edge-agent/managed/config.toml and
records its sha256 beside the config, in root's /etc/edge-agent/config.example.sha256. While the
config is still byte for byte that file, `load_config` refuses it (`untouched_example`), so that
neither `check-config`, `run` (the unit's command), `probe` nor a reboot of the enabled
service starts polling the example's addresses on a gateway nobody has configured. Any edit ends
it. By content, not by a marker string inside the config that an engineer might keep; a copy of
the example made by hand (no record beside it) is not recognised.

`check-config` and `run` exit with their own status for it, EXIT_UNEDITED_EXAMPLE (78, sysexits'
EX_CONFIG: systemd logs `status=78/CONFIG`), not the 2 of an invalid config: the unit names it in
`RestartPreventExitStatus=`, so a gateway booted on the unedited example fails once with the line
saying what to edit, instead of being restarted every RestartSec for as long as nobody comes.
Nothing but an edit ends this state (the agent is not running, so no signed config_update can
arrive), whereas an invalid config may be mended by what it waits for and is retried as before.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Final

from water_edge.core.errors import ConfigError

RECORD_NAME: Final = "config.example.sha256"
EXIT_UNEDITED_EXAMPLE: Final = 78  # EX_CONFIG; deploy/edge-agent.service's RestartPreventExitStatus
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _records(config: Path) -> list[Path]:
    """Where a record for `config` may be: beside the path given (/etc/edge-agent/config.toml), and
    beside the directory it links into (managed/config.toml's parent's parent)."""
    places = [config.parent / RECORD_NAME]
    try:
        real = config.resolve()
    except OSError:
        return places
    if (other := real.parent.parent / RECORD_NAME) not in places:
        places.append(other)
    return places


def untouched_example(config: Path) -> str | None:
    """Why `config` is refused as the unedited example install.sh wrote (one line naming what to
    do), or None: no record beside it, or the file differs from what was recorded."""
    for record in _records(config):
        try:
            text = record.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        recorded = {
            word
            for line in text.splitlines()
            if not line.lstrip().startswith("#")
            and (word := (line.split() or [""])[0])
            and _SHA256.fullmatch(word)
        }
        if not recorded:
            continue
        try:
            digest = hashlib.sha256(config.read_bytes()).hexdigest()
        except OSError:
            return None
        if digest in recorded:
            return (
                f"{config}: this is still the example config deploy/install.sh installed, unedited (its "
                f"sha256 is recorded in {record}): the agent does not run on it, so that a gateway nobody "
                "has configured never polls the example's device addresses. Edit [gateway], [uplink] and "
                "[[devices]] for this site, then `edge-agent check-config` and `systemctl start edge-agent`"
            )
    return None


class UntouchedExampleError(ConfigError):
    """The config is the unedited example install.sh wrote (`str(exc)`: one line saying what to
    edit); the CLI exits EXIT_UNEDITED_EXAMPLE for it."""
