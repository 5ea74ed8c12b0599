"""Checks a `model_update` bundle before its slot loads anything from it.

A bundle is the files a command sent, stored in their own directory. Before the slot sees it:
the manifest's `model_file` must be one of those files (a plain name, resolving inside the bundle:
no `../`, no absolute path, no symlink out); the manifest must carry a self-test; its input and
output tensor specs must be the ones the slot's model in service has; and every self-test vector
must fit those shapes. The slot's own swap then checks the sha256 and runs the self-test, so a
model that loads at all has been run on the slot's input shape and gave the slot's output shape:
a model for another detector cannot take the slot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from water_edge.agent.remote.result import CommandRefusedError
from water_edge.models.manifest import Manifest, ModelError, TensorSpec, read_manifest


class _HasManifest(Protocol):
    @property
    def manifest(self) -> Manifest: ...


@runtime_checkable
class ServingSlot(Protocol):
    """A model slot that can say what it serves (`models.runtime.ModelSlot`)."""

    @property
    def loaded(self) -> bool: ...

    @property
    def model(self) -> _HasManifest: ...


def _shape(value: Any) -> tuple[int, ...]:
    """The shape of a nested list (ragged lists give the shape of their first elements)."""
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _fits(shape: tuple[int, ...], spec: TensorSpec) -> bool:
    return len(shape) == len(spec.shape) and all(s in (-1, d) for s, d in zip(spec.shape, shape, strict=True))


def check_bundle(bundle: Path, manifest_name: str, sent: set[str], slot: object) -> Manifest:
    """The bundle's manifest if the slot may try it; CommandRefusedError saying why not."""
    try:
        manifest = read_manifest(bundle / manifest_name)
    except ModelError as exc:
        raise CommandRefusedError("bad_model", str(exc).replace(str(bundle) + "/", "")) from None
    name = manifest.model_file
    inside = (bundle / name).resolve()
    if name not in sent or "/" in name or name in (".", "..") or inside.parent != bundle.resolve():
        raise CommandRefusedError(
            "bad_model", f"model_file {name[:80]!r} is not one of the files sent with the manifest"
        )
    if not manifest.self_test:
        raise CommandRefusedError("bad_model", "the manifest has no self_test vectors")
    if not isinstance(slot, ServingSlot) or not slot.loaded:
        raise CommandRefusedError("bad_model", "the slot does not say which tensor shapes it serves")
    serving = slot.model.manifest
    for what, new, old in (
        ("input", manifest.input, serving.input),
        ("output", manifest.output, serving.output),
    ):
        if new != old:
            raise CommandRefusedError(
                "bad_model",
                f"{what} {list(new.shape)} {new.dtype} does not match the slot's "
                f"{list(old.shape)} {old.dtype}",
            )
    for i, vector in enumerate(manifest.self_test):
        if not _fits(_shape(vector.input), serving.input) or not _fits(_shape(vector.output), serving.output):
            raise CommandRefusedError(
                "bad_model", f"self_test {i} does not have the slot's input and output shapes"
            )
    return manifest
