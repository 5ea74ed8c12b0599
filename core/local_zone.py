"""The machine's own time zone as a zone with its daylight-saving rules, not today's offset.

`datetime.now().astimezone().tzinfo` is a fixed offset (`CET`, +01:00): an agent started in
winter kept reading summer instants an hour early until it was restarted, so nights and a day's
15-minute slots left the hours they were configured for at every change. What libc uses, in its
order: `TZ` (an IANA name, `:Europe/Rome` too), else `/etc/localtime` (a link into the zoneinfo
tree names its zone; a copied file is read as it is). Only when neither gives a zone is today's
fixed offset used (a POSIX `TZ` rule string, a machine without zone data); `zone_source` says which.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

LOCALTIME = Path("/etc/localtime")


def _named(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def system_zone(env: Mapping[str, str] | None = None, localtime: Path = LOCALTIME) -> tuple[tzinfo, str]:
    """The zone local time is read in, and where it came from (for logs and `check-config`)."""
    env = os.environ if env is None else env
    tz = env.get("TZ", "").removeprefix(":")
    if tz and (found := _named(tz)) is not None:
        return found, f"TZ={tz}"
    try:
        target = os.readlink(localtime)
    except OSError:
        target = ""
    if "zoneinfo/" in target and (found := _named(target.rsplit("zoneinfo/", 1)[1])) is not None:
        return found, f"{localtime} -> {found.key}"
    try:
        with localtime.open("rb") as file:
            return ZoneInfo.from_file(file, key=str(localtime)), str(localtime)
    except (OSError, ValueError):
        pass
    fixed = datetime.now().astimezone().tzinfo or UTC
    return fixed, f"a fixed offset ({fixed}): no zone found in TZ or {localtime}"


def keeps_utc(zone: tzinfo) -> bool:
    """Whether `zone` reads UTC all year (UTC under any name, or a copy of it), or is only a fixed
    offset: either way no daylight saving."""
    if not isinstance(zone, ZoneInfo):
        return True
    year = datetime.now(UTC).year
    offsets = {datetime(year, month, 15, 12, tzinfo=UTC).astimezone(zone).utcoffset() for month in (1, 7)}
    return offsets == {timedelta(0)}


def zone(name: str | None) -> tzinfo:
    """The IANA zone `name`, or the system's local zone for None; ValueError for an unknown name."""
    if name is None:
        return system_zone()[0]
    try:
        return ZoneInfo(name)
    # OSError: a name too long for a file name (ZoneInfo looks it up as one).
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        expected = "an IANA name such as 'Europe/Amsterdam'"
        raise ValueError(f"unknown time zone {name!r} (expected {expected})") from exc


def unset_zone_warning(what: str) -> str | None:
    """For a section whose `timezone` is not set: a warning when this machine's zone is UTC or a
    fixed offset (nights and day slots would then not follow the district's clock), else None."""
    tz, source = system_zone()
    if keeps_utc(tz):
        return (
            f"not set, and this machine's zone is {source}: {what} are read in it, and do not follow "
            "daylight saving; set it to the site's IANA zone (e.g. 'Europe/Rome') unless the site keeps UTC"
        )
    return None


def check_zone(name: str | None) -> str | None:
    """Pydantic-style validator body: the name if it is a known zone."""
    zone(name)
    return name
