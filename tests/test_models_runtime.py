"""The model runtime: verified loading, self-test, thread-safe invoke, and swap without restart."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from water_edge.core.digests import sha256_file
from water_edge.models.manifest import ModelError
from water_edge.models.runtime import ModelSlot, load_model

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "pump" / "pump_scorer.json"


def copy_model(tmp: Path, name: str = "m") -> Path:
    """A copy of the shipped pump model and manifest in `tmp/name/`."""
    folder = tmp / name
    folder.mkdir()
    data = json.loads(SHIPPED.read_text())
    shutil.copy(SHIPPED.parent / data["model_file"], folder / data["model_file"])
    manifest = folder / SHIPPED.name
    manifest.write_text(json.dumps(data))
    return manifest


def edit(manifest: Path, **changes: object) -> None:
    data = json.loads(manifest.read_text())
    data.update(changes)
    manifest.write_text(json.dumps(data))


def test_what_the_native_runtime_prints_reaches_the_log_not_raw_stderr() -> None:
    # LiteRT's C++ code prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on fd 2,
    # once per process: under systemd that was a non-JSON line in a JSON log. A fresh process, so
    # the line is printed at all.
    code = (
        "import structlog, sys\n"
        "structlog.configure(processors=[structlog.processors.JSONRenderer()],"
        " logger_factory=structlog.PrintLoggerFactory(sys.stdout))\n"
        "from water_edge.models.runtime import load_model\n"
        f"print(load_model({str(SHIPPED)!r}).backend)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "TensorFlow Lite" not in done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()[:-1]]
    native = [e for e in lines if e["event"] == "litert.native_output"]
    if done.stdout.splitlines()[-1] == "ai_edge_litert":
        assert any("XNNPACK" in e["line"] for e in native), done.stdout
    assert all(e["model"] == "pump_scorer" for e in native)


def test_the_agents_own_log_lines_written_while_a_model_loads_stay_as_they_are() -> None:
    """fd 2 is captured while the runtime loads; a log line of the agent's written meanwhile (by
    another thread, in the agent) must stay one JSON object with its event, and only the runtime's
    own text becomes a `litert.native_output` line."""
    code = (
        "import os, structlog, sys\n"
        "structlog.configure(processors=[structlog.processors.JSONRenderer()],"
        " logger_factory=structlog.PrintLoggerFactory(sys.stderr))\n"
        "from water_edge.models.runtime import _native_stderr_logged\n"
        "with _native_stderr_logged('leak_detector'):\n"
        "    structlog.get_logger().info('driver.opened', driver='plc1')\n"
        "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(e["event"], e.get("driver"), e.get("line")) for e in events] == [
        ("driver.opened", "plc1", None),
        ("litert.native_output", None, "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."),
    ]


def test_shipped_model_loads_verifies_and_passes_its_self_test() -> None:
    model = load_model(SHIPPED)
    assert sha256_file(model.path) == model.manifest.sha256
    out = model.invoke(np.zeros((3, 32, 2), dtype=np.float32))
    assert out.shape == (3, 1)
    assert np.all(out >= 0)  # softplus: scores are non-negative


def test_wrong_input_shape_is_a_clear_error() -> None:
    model = load_model(SHIPPED)
    with pytest.raises(ModelError, match="does not fit"):
        model.invoke(np.zeros((2, 16, 2), dtype=np.float32))


def test_tampered_model_file_is_refused(tmp_path: Path) -> None:
    manifest = copy_model(tmp_path)
    blob = bytearray((manifest.parent / "pump_scorer.tflite").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (manifest.parent / "pump_scorer.tflite").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256"):
        load_model(manifest)


def test_invalid_manifest_names_the_file_and_field(tmp_path: Path) -> None:
    manifest = copy_model(tmp_path)
    edit(manifest, sha256="not-a-hash")
    with pytest.raises(ModelError, match=r"pump_scorer.json.*sha256"):
        load_model(manifest)


def test_failing_self_test_is_refused(tmp_path: Path) -> None:
    manifest = copy_model(tmp_path)
    data = json.loads(manifest.read_text())
    data["self_test"][0]["output"] = (np.asarray(data["self_test"][0]["output"]) + 1.0).tolist()
    manifest.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="self-test 0 failed"):
        load_model(manifest)


async def test_concurrent_invokes_from_threads_agree() -> None:
    model = load_model(SHIPPED)
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(n, 32, 2)).astype(np.float32) for n in (1, 5, 9, 5, 1, 9)]
    expected = [model.invoke(x) for x in inputs]
    got = await asyncio.gather(*(asyncio.to_thread(model.invoke, x) for x in inputs * 3))
    for i, out in enumerate(got):
        np.testing.assert_array_equal(out, expected[i % len(inputs)])


async def test_swap_replaces_the_model_and_a_bad_swap_keeps_the_old_one(tmp_path: Path) -> None:
    slot = ModelSlot(load_model(SHIPPED))
    old_version = slot.model.version

    newer = copy_model(tmp_path, "newer")
    edit(newer, version="9.9.9")
    ok = await slot.swap(newer)
    assert ok.ok
    assert ok.version == "9.9.9"
    assert slot.model.version == "9.9.9"

    broken = copy_model(tmp_path, "broken")
    edit(broken, version="10.0.0")
    (broken.parent / "pump_scorer.tflite").write_bytes(b"not a model")
    refused = await slot.swap(broken)
    assert not refused.ok
    assert refused.reason is not None
    assert "sha256" in refused.reason
    assert slot.model.version == "9.9.9"  # still serving the last good one
    assert slot.health().refused == 1
    assert slot.health().swaps == 1
    assert old_version != "9.9.9"
