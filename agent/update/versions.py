"""Release versions the updater puts in order, for the minimum-version floor (docs/updates.md): the
normalised PEP 440 versions a wheel's name carries (`1.3.0`, `1.3.0rc1`, `1.3.0.post1`,
`1.4.0.dev2`), ordered as PEP 440 orders them. Not `packaging`: a gateway does not install it.
Anything else (a local `+tag`, an epoch, a spelling pip would normalise) is refused, never guessed.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from water_edge.core.errors import AgentError

EXPECTED: Final = (
    "a release version such as 1.3.0 (numbers and dots, then optionally a1, b1 or rc1, .post1, .dev1)"
)
_FORM = re.compile(
    r"(\d{1,9}(?:\.\d{1,9}){0,9})(?:(a|b|rc)(\d{1,9}))?(?:\.post(\d{1,9}))?(?:\.dev(\d{1,9}))?"
)
_PRE_RANK = {"a": 0, "b": 1, "rc": 2}


class VersionError(AgentError):
    """Text that is not a release version the updater can put in order."""


@functools.total_ordering
class ReleaseVersion:
    """A release version that compares as PEP 440 says: 1.3 == 1.3.0 < 1.3.1.dev0 < 1.3.1a1 <
    1.3.1rc1 < 1.3.1 < 1.3.1.post1."""

    __slots__ = ("_key", "text")

    def __init__(self, text: str) -> None:
        found = _FORM.fullmatch(text)
        if found is None:
            raise VersionError(f"{text[:40]!r} is not {EXPECTED}")
        release_text, pre, pre_n, post, dev = found.groups()
        release = tuple(int(part) for part in release_text.split("."))
        while len(release) > 1 and release[-1] == 0:
            release = release[:-1]
        if pre is not None:
            pre_key = (_PRE_RANK[pre], int(pre_n))
        elif post is None and dev is not None:
            pre_key = (-1, 0)  # 1.3.dev0 comes before 1.3a0
        else:
            pre_key = (3, 0)  # a final release (or its post-release) after every pre-release
        post_key = -1 if post is None else int(post)
        dev_key = (1, 0) if dev is None else (0, int(dev))
        self.text = text
        self._key = (release, pre_key, post_key, dev_key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReleaseVersion) and self._key == other._key

    def __lt__(self, other: ReleaseVersion) -> bool:
        return self._key < other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"ReleaseVersion({self.text!r})"
