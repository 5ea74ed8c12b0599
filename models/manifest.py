"""The manifest that travels with every shipped `.tflite`: what the model is, how to feed it, how
far to trust it, and the file's sha256 so a gateway can refuse a corrupted or tampered model.

A manifest is a JSON file next to its model (`pump_ae.json` beside `pump_ae.tflite`); `model_file`
is relative to the manifest's folder. `self_test` holds input/output pairs recorded when the model
was built: a gateway runs them before it puts the model in service.
"""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from water_edge.core.digests import sha256_file
from water_edge.core.errors import AgentError

DType = Literal["float32", "int8", "uint8", "int16"]


class ModelError(AgentError):
    """A model or its manifest cannot be loaded, verified or run."""


def shipped(package: str, name: str) -> Path:
    """A manifest shipped inside `package` (e.g. `water_edge.models.pump`), found the way the
    installed package holds it rather than by walking up from a source file."""
    return Path(str(resources.files(package).joinpath(name)))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quantisation(_Strict):
    """Affine quantisation of a tensor: real = scale * (q - zero_point)."""

    scale: float = Field(gt=0)
    zero_point: int = 0


class TensorSpec(_Strict):
    """Shape (-1 for a dimension the caller chooses, e.g. the batch) and dtype of one tensor."""

    shape: tuple[int, ...]
    dtype: DType = "float32"
    quantisation: Quantisation | None = None


class TestVector(_Strict):
    """One recorded input and the output the model gave for it when it was built."""

    input: list[Any]
    output: list[Any]
    atol: float = Field(default=1e-4, ge=0)


class Manifest(_Strict):
    """Everything a gateway needs to know about one model file."""

    name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=32)
    created: datetime
    model_file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input: TensorSpec
    output: TensorSpec
    sample_rate: float | None = Field(default=None, gt=0)
    threshold: float | None = None
    training_data: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    self_test: list[TestVector] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)

    def model_path(self, manifest_path: Path) -> Path:
        return manifest_path.parent / self.model_file


def read_manifest(path: Path) -> Manifest:
    """Parse and validate a manifest file; any problem is one `ModelError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"{path}: cannot read manifest: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: not a manifest: not UTF-8 JSON (byte {exc.start})") from exc
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ModelError(f"{path}: invalid manifest at {where}: {first['msg']}") from exc


def verify_file(manifest: Manifest, manifest_path: Path) -> Path:
    """The model file's path once its sha256 matches the manifest; `ModelError` otherwise."""
    model_path = manifest.model_path(manifest_path)
    try:
        actual = sha256_file(model_path)
    except OSError as exc:
        raise ModelError(f"{model_path}: cannot read model file: {exc.strerror or exc}") from exc
    if actual != manifest.sha256:
        raise ModelError(
            f"{model_path}: sha256 {actual[:12]}… does not match the manifest's {manifest.sha256[:12]}…; "
            "refusing a corrupted or tampered model"
        )
    return model_path
