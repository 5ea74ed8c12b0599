"""Public holidays of a country (and subdivision) for burst detection's day kinds, from the
`holidays` package's rules, so a configured calendar does not run out the way a list of dates does.

The dates are worked out in a child process (`python -m water_edge.models.flow_leak.holiday_dates
IT`): importing the package loads every country's rules (about 300 modules, 12 MiB resident) for a
list of a few hundred dates read once at start. The child prints ISO dates, one per line, for the
years `FIRST_YEAR` to this year + `YEARS_AHEAD`, so a replayed history and a gateway that runs for
years both find theirs. Results are kept per process: check-config and the processor ask once.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
from datetime import date

FIRST_YEAR = 2000
YEARS_AHEAD = 30
EXIT_UNKNOWN_COUNTRY = 2
EXIT_UNKNOWN_SUBDIVISION = 3


class HolidayCalendarError(ValueError):
    """The country or subdivision is not known, or the calendar could not be worked out.
    `key` is the config key at fault."""

    def __init__(self, message: str, key: str = "holidays_country") -> None:
        super().__init__(message)
        self.key = key


@functools.lru_cache(maxsize=16)
def public_holidays(country: str, subdivision: str | None = None) -> frozenset[date]:
    """Every public holiday of `country` (ISO 3166-1 code) in `subdivision` (ISO 3166-2 part
    after the dash, e.g. "BY"), from `FIRST_YEAR` to `YEARS_AHEAD` years from now."""
    argv = [sys.executable, "-m", __name__, country]
    if subdivision is not None:
        argv += ["--subdivision", subdivision]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HolidayCalendarError(f"the holiday calendar could not be worked out ({exc})") from exc
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        key = "holidays_subdivision" if done.returncode == EXIT_UNKNOWN_SUBDIVISION else "holidays_country"
        raise HolidayCalendarError(why[0], key)
    return frozenset(date.fromisoformat(line) for line in done.stdout.split())


def _dates(country: str, subdivision: str | None, last_year: int) -> list[date]:
    import holidays

    try:
        calendar = holidays.country_holidays(
            country, subdiv=subdivision, years=range(FIRST_YEAR, last_year + 1)
        )
    except NotImplementedError:
        if country not in holidays.list_supported_countries():
            raise HolidayCalendarError(
                f"unknown country {country!r}: expected an ISO 3166-1 code such as IT, JP, DE or GB"
            ) from None
        known = ", ".join(holidays.list_supported_countries()[country])
        raise HolidayCalendarError(
            f"{country} has no subdivision {subdivision!r}: expected one of {known}", "holidays_subdivision"
        ) from None
    return sorted(calendar)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="print a country's public holidays, one ISO date a line")
    ap.add_argument("country")
    ap.add_argument("--subdivision", default=None)
    args = ap.parse_args(argv)
    try:
        days = _dates(args.country, args.subdivision, date.today().year + YEARS_AHEAD)
    except HolidayCalendarError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_UNKNOWN_SUBDIVISION if exc.key == "holidays_subdivision" else EXIT_UNKNOWN_COUNTRY
    sys.stdout.write("".join(f"{d.isoformat()}\n" for d in days))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
