"""The tags `[[models.*]]` tables name, checked against the devices that read them.

A processor takes a reading whose `device/tag` or bare `tag` it names. A bare tag that two devices
read (two RTU meters each with a `flow`) feeds one signal from both, alternating: a wrong result
nobody sees. A misspelt tag never arrives and the model waits for ever. Both are found here where
the devices' tags are known (Modbus, OPC UA); a device whose tags are only known once read (M-Bus
records, audio levels) may still carry a tag no other device has, which is then a warning.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from water_edge.core.processor import ConfigProblem
from water_edge.drivers.base import DeviceConfig


def check_tag_references(
    references: Sequence[tuple[tuple[int | str, ...], str]], devices: Sequence[DeviceConfig]
) -> tuple[list[ConfigProblem], list[ConfigProblem]]:
    """(problems, warnings) for `references` (`where`, `"tag"` or `"device/tag"`)."""
    tags = {device.name: device.tag_names() for device in devices}
    disabled = {device.name for device in devices if not device.enabled}
    problems: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    for where, reference in references:
        device, slash, tag = reference.partition("/")
        if slash:
            message = _device_tag(device, tag, tags)
            if message:
                problems.append(ConfigProblem(where, message))
            elif device in disabled:
                warnings.append(ConfigProblem(where, _from_disabled(reference, device)))
            continue
        readers = sorted(name for name, known in tags.items() if known is not None and reference in known)
        if readers and all(name in disabled for name in readers):
            warnings.append(ConfigProblem(where, _from_disabled(reference, readers[0])))
        if len(readers) > 1:
            problems.append(
                ConfigProblem(
                    where,
                    f"tag {reference!r} is read by devices {' and '.join(readers)}: say which, "
                    f"e.g. {readers[0] + '/' + reference!r}",
                )
            )
        elif not readers:
            unknown = sorted(name for name, known in tags.items() if known is None)
            text = f"no device reads a tag {reference!r}{_did_you_mean(reference, tags)}"
            if unknown:
                warnings.append(
                    ConfigProblem(
                        where, f"{text}; only {' or '.join(unknown)} (tags known once read) could send it"
                    )
                )
            else:
                problems.append(ConfigProblem(where, text))
    return problems, warnings


def _device_tag(device: str, tag: str, tags: dict[str, frozenset[str] | None]) -> str | None:
    if device not in tags:
        return f"no device named {device!r} (devices: {', '.join(tags) or 'none'})"
    known = tags[device]
    if known is not None and tag not in known:
        return f"device {device!r} has no tag {tag!r}{_did_you_mean(tag, {device: known})}"
    return None


def _from_disabled(reference: str, device: str) -> str:
    return f"{reference!r} comes from device {device!r}, which is disabled (enabled = false): none arrives"


def _did_you_mean(tag: str, tags: dict[str, frozenset[str] | None]) -> str:
    every = sorted({name for known in tags.values() if known for name in known})
    close = difflib.get_close_matches(tag, every, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


__all__ = ["check_tag_references"]
