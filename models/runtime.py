"""Loads verified `.tflite` models and runs them; swaps a running model for a new one without a restart.

`load_model(manifest_path)` reads the manifest, checks the model file's sha256, opens it with LiteRT
(`ai_edge_litert`), falling back to `tflite_runtime`, and runs the manifest's self-test vectors.
`Model.invoke` is blocking and thread-safe (one interpreter per model behind a lock): call it from
the event loop with `asyncio.to_thread`. A `ModelSlot` holds the model in service; `swap` verifies
and self-tests the new one in a worker thread and replaces the old one only if everything passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from water_edge.models.manifest import Manifest, ModelError, read_manifest, verify_file

log = structlog.get_logger(__name__)

_BACKENDS = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
_NATIVE_STDERR = threading.Lock()


@contextlib.contextmanager
def _native_stderr_logged(model: str) -> Iterator[None]:
    """What the TFLite runtime's C++ code prints on file descriptor 2 while this block runs
    ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.") becomes structured log lines, so
    the agent's log stays one JSON object per line. LiteRT has no switch for its log level. The
    block is short (allocating tensors); the agent's own log lines written by another thread
    meanwhile (JSON objects) are passed on as they were, not wrapped in a native line."""
    with _NATIVE_STDERR, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if _own_log_line(line):
                    sys.stderr.write(line + "\n")
                elif line.strip():
                    log.info("litert.native_output", model=model, line=line.strip())
            sys.stderr.flush()


def _own_log_line(line: str) -> bool:
    """A structured log line of the agent's (a JSON object with an `event`), not the runtime's."""
    if not line.startswith("{"):
        return False
    try:
        doc = json.loads(line)
    except ValueError:
        return False
    return isinstance(doc, dict) and "event" in doc


def _interpreter_class() -> tuple[str, Any]:
    """LiteRT first, `tflite_runtime` second; imported lazily (start-up time on a Pi)."""
    for name in _BACKENDS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return name.split(".")[0], module.Interpreter
    raise ModelError("no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime)")


class Model:
    """One loaded model. `invoke` may be called from any thread; calls are serialised."""

    def __init__(self, manifest: Manifest, path: Path, interpreter: Any, backend: str) -> None:
        self.manifest = manifest
        self.path = path
        self.backend = backend
        self._interp = interpreter
        self._lock = threading.Lock()
        self._in = interpreter.get_input_details()[0]
        self._out_index = interpreter.get_output_details()[0]["index"]
        self._shape: tuple[int, ...] = tuple(int(d) for d in self._in["shape"])
        self.invocations = 0

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def invoke(self, x: npt.ArrayLike) -> npt.NDArray[Any]:
        """Run the model on `x` (its shape must match the input spec, -1 dims free); a copy of the output."""
        arr = np.asarray(x, dtype=self.manifest.input.dtype)
        spec = self.manifest.input.shape
        if arr.ndim != len(spec) or any(s not in (-1, d) for s, d in zip(spec, arr.shape, strict=True)):
            raise ModelError(f"model {self.name}: input shape {arr.shape} does not fit the spec {list(spec)}")
        if arr.size == 0:
            raise ModelError(f"model {self.name}: empty input")
        with self._lock:
            if arr.shape != self._shape:
                self._interp.resize_tensor_input(self._in["index"], list(arr.shape), strict=False)
                self._interp.allocate_tensors()
                self._shape = arr.shape
            self._interp.set_tensor(self._in["index"], arr)
            self._interp.invoke()
            self.invocations += 1
            out: npt.NDArray[Any] = np.array(self._interp.get_tensor(self._out_index), copy=True)
        return out

    def self_test(self) -> None:
        """Run every recorded test vector; `ModelError` saying which one and by how much if any differs."""
        for i, vector in enumerate(self.manifest.self_test):
            got = self.invoke(np.asarray(vector.input, dtype=self.manifest.input.dtype))
            want = np.asarray(vector.output, dtype=np.float64)
            if got.shape != want.shape:
                raise ModelError(
                    f"model {self.name} {self.version}: self-test {i} output shape {got.shape}, "
                    f"expected {want.shape}"
                )
            err = float(np.max(np.abs(got.astype(np.float64) - want)))
            if not np.isfinite(err) or err > vector.atol:
                raise ModelError(
                    f"model {self.name} {self.version}: self-test {i} failed "
                    f"(max difference {err:.3g} > {vector.atol:g})"
                )

    def describe(self) -> ModelInfo:
        m = self.manifest
        return ModelInfo(
            name=m.name,
            version=m.version,
            sha256=m.sha256,
            backend=self.backend,
            file=str(self.path),
            invocations=self.invocations,
        )


def load_model(manifest_path: Path | str, *, num_threads: int = 1, self_test: bool = True) -> Model:
    """Verify, open and (by default) self-test the model a manifest describes; `ModelError` if not."""
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    model_path = verify_file(manifest, manifest_path)
    backend, interpreter_cls = _interpreter_class()
    try:
        with _native_stderr_logged(manifest.name):
            interpreter = interpreter_cls(model_path=str(model_path), num_threads=num_threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{model_path}: not a loadable TFLite model: {exc}") from exc
    model = Model(manifest, model_path, interpreter, backend)
    if self_test:
        try:
            model.self_test()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{model_path}: self-test could not run: {exc}") from exc
    log.info("model.loaded", model=manifest.name, version=manifest.version, backend=backend)
    return model


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The model in service: which one, from which file, run by which TFLite backend, how often."""

    name: str
    version: str
    sha256: str
    backend: str
    file: str
    invocations: int


@dataclass(frozen=True, slots=True)
class ModelSlotHealth:
    """A model slot (`core.health.Health`): the model in service and what became of the swaps."""

    model: ModelInfo | None  # None before a model is loaded
    swaps: int
    refused: int  # swaps refused (bad sha256, failed self-test); the old model stayed in service
    last_refusal: str | None

    def status_lines(self) -> list[str]:
        model = "no model" if self.model is None else f"{self.model.name} {self.model.version}"
        refused = f"  refused {self.refused}: {self.last_refusal}" if self.refused else ""
        return [f"{model}  swaps {self.swaps}{refused}"]


@dataclass(frozen=True, slots=True)
class SwapResult:
    """What a swap did: `ok`, the version now in service, and why when it refused."""

    ok: bool
    version: str | None
    reason: str | None = None


class ModelSlot:
    """The model in service for one detector; replaced atomically by `swap`, never left empty by a failure."""

    def __init__(self, model: Model | None = None) -> None:
        self._model = model
        self._swap_lock = asyncio.Lock()
        self.swaps = 0
        self.refused = 0
        self.last_refusal: str | None = None

    @property
    def model(self) -> Model:
        if self._model is None:
            raise ModelError("no model loaded")
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def fingerprint(self) -> str | None:
        if self._model is None:
            return None
        m = self._model.manifest
        return f"{m.name} {m.version} {m.sha256}"

    async def swap(self, manifest_path: Path | str) -> SwapResult:
        """Load, verify and self-test a new model off the loop; put it in service only if all passed."""
        async with self._swap_lock:
            try:
                new = await asyncio.to_thread(load_model, manifest_path)
            except ModelError as exc:
                self.refused += 1
                self.last_refusal = str(exc)
                current = self._model.version if self._model else None
                log.warning("model.swap_refused", manifest=str(manifest_path), reason=str(exc), kept=current)
                return SwapResult(False, current, str(exc))
            old = self._model
            self._model = new  # one reference assignment: readers see the old or the new, never half
            self.swaps += 1
            log.info("model.swapped", model=new.name, old=old.version if old else None, new=new.version)
            return SwapResult(True, new.version)

    def health(self) -> ModelSlotHealth:
        return ModelSlotHealth(
            model=self._model.describe() if self._model else None,
            swaps=self.swaps,
            refused=self.refused,
            last_refusal=self.last_refusal,
        )
