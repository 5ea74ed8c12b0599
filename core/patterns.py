"""What a config key's `pattern=` means, in words: `check-config` says "expected a NodeId such as
ns=2;s=pump1.flow" where pydantic would print the regular expression.

A module that checks a key against a pattern registers the words with it (`explained`), at import,
which happens before its config is validated; a pattern without words keeps pydantic's message.
"""

from __future__ import annotations

_WORDS: dict[str, str] = {}


def explained(pattern: str, words: str) -> str:
    """`pattern`, with `words` (what a matching value looks like) registered for error messages."""
    _WORDS[pattern] = words
    return pattern


def pattern_words(pattern: object) -> str | None:
    """The words registered for `pattern`, if any."""
    return _WORDS.get(pattern) if isinstance(pattern, str) else None


__all__ = ["explained", "pattern_words"]
