"""A key that takes one of several forms (`password = "…"` or `{ file = "…" }`, `latency = "high"`
or seconds) fails in pydantic once per form, each error's path carrying the form's internal name
(`password.function-after[_exactly_one(), SecretRef]`). This turns them back into the file's keys:
the errors of the form the value was written in, or one line listing the forms it could take."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Pydantic's names for the members of a union that are not models or wrapped types.
_SCALAR_MEMBERS = frozenset({"str", "int", "float", "bool", "none"})

# Errors that only say "not this form": the value was written in another one.
WRONG_FORM = frozenset(
    {
        "model_type",
        "dict_type",
        "model_attributes_type",
        "list_type",
        "tuple_type",
        "int_type",
        "float_type",
        "string_type",
        "bool_type",
        "literal_error",
    }
)

_FORM_WORDS = {
    "model_type": "a table",
    "dict_type": "a table",
    "model_attributes_type": "a table",
    "list_type": "a list",
    "tuple_type": "a list",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
}


def _looks_like_member(part: object) -> bool:
    return isinstance(part, str) and (
        part in _SCALAR_MEMBERS or "[" in part or (part[:1].isupper() and part.isidentifier())
    )


def _member_index(loc: Sequence[int | str]) -> int | None:
    return next((i for i, part in enumerate(loc) if _looks_like_member(part)), None)


def _form_words(error: Any) -> str:
    if error["type"] == "model_type" and error.get("ctx", {}).get("class_name") == "SecretRef":
        return 'a table { file = "…" } or { env = "…" }'
    if error["type"] == "literal_error":
        return str(error.get("ctx", {}).get("expected", error["msg"]))
    return _FORM_WORDS.get(error["type"], str(error["msg"]))


def merge_union_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """`errors` (pydantic's `ValidationError.errors()`) with each union's member names taken out of
    the paths. Where the value failed every form at its root, one error of type `union` whose
    `msg` lists the forms ("expected 'low' or 'high' or a number")."""
    groups: dict[tuple[int | str, ...], dict[str, list[Any]]] = {}
    for error in errors:
        index = _member_index(error["loc"])
        if index is not None:
            members = groups.setdefault(tuple(error["loc"][:index]), {})
            members.setdefault(error["loc"][index], []).append(error)
    unions = {prefix: members for prefix, members in groups.items() if len(members) >= 2}

    merged: list[dict[str, Any]] = []
    done: set[tuple[int | str, ...]] = set()
    for error in errors:
        index = _member_index(error["loc"])
        prefix = tuple(error["loc"][:index]) if index is not None else None
        if prefix is None or prefix not in unions:
            merged.append(dict(error))
            continue
        if prefix in done:
            continue
        done.add(prefix)
        merged.extend(_one_union(prefix, unions[prefix]))
    return merged


def _one_union(prefix: tuple[int | str, ...], members: dict[str, list[Any]]) -> list[dict[str, Any]]:
    depth = len(prefix) + 1
    entered = [
        error
        for found in members.values()
        for error in found
        if len(error["loc"]) > depth or error["type"] not in WRONG_FORM
    ]
    if entered:
        # The value has this member's shape (a table for `{ file = … }`): what is wrong inside it.
        return [{**error, "loc": (*prefix, *error["loc"][depth:])} for error in entered]
    forms = [_form_words(found[0]) for found in members.values()]
    first = next(iter(members.values()))[0]
    return [
        {
            "type": "union",
            "loc": prefix,
            "msg": "expected " + " or ".join(dict.fromkeys(forms)),
            "input": first.get("input"),
        }
    ]


__all__ = ["merge_union_errors"]
