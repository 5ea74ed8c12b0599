"""Prints `name!=version` for every distribution installed in this interpreter's environment whose
Requires-Python leaves this interpreter out, one per line (a constraints file for the installer).

uv ignores the upper bound of a dependency's Requires-Python where pip honours it: on Python 3.11
uv took backports.strenum 1.3.1 (`>=3.8.6,<3.11`, required by ai-edge-litert) where pip, and so
a gateway, takes 1.2.8. scripts/bootstrap.sh installs again with these excluded until none is left.
"""

from __future__ import annotations

import importlib.metadata
import platform

from packaging.specifiers import InvalidSpecifier, SpecifierSet


def misfits() -> list[str]:
    here = platform.python_version()
    found = []
    for dist in importlib.metadata.distributions():
        wanted = next(iter(dist.metadata.get_all("Requires-Python") or []), None)
        try:
            fits = not wanted or SpecifierSet(wanted).contains(here, prereleases=True)
        except InvalidSpecifier:
            fits = True  # as pip treats a Requires-Python it cannot parse
        if not fits:
            found.append(f"{dist.metadata['Name']}!={dist.version}")
    return sorted(found)


if __name__ == "__main__":
    for line in misfits():
        print(line)
