"""The committed Sparkplug B classes are exactly what the generator makes from the shipped schema."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from water_edge.agent.uplink.sparkplug.proto import DataType, Payload

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT.parent / "shared" / "spec"
GENERATED = ROOT / "agent" / "uplink" / "sparkplug"


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools not installed")
@pytest.mark.skipif(not (SPEC / "sparkplug_b.proto").exists(), reason="shared/spec not beside the checkout")
def test_regenerating_gives_the_committed_bytes(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={SPEC}",
         f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", "sparkplug_b.proto"],
        check=True,
    )  # fmt: skip
    for name in ("sparkplug_b_pb2.py", "sparkplug_b_pb2.pyi"):
        assert (tmp_path / name).read_bytes() == (GENERATED / name).read_bytes(), name


def test_a_payload_round_trips_with_the_official_field_numbers() -> None:
    payload = Payload(timestamp=1_700_000_000_123, seq=7)
    metric = payload.metrics.add(name="pump1.flow", alias=3, datatype=DataType.Double, double_value=412.5)
    metric.timestamp = 1_700_000_000_100
    wire = payload.SerializeToString()
    # Field 1 (timestamp, varint) comes first: tag byte 0x08, as every Sparkplug host expects.
    assert wire[0] == 0x08
    back = Payload.FromString(wire)
    assert back.seq == 7
    assert back.metrics[0].name == "pump1.flow"
    assert back.metrics[0].WhichOneof("value") == "double_value"
    assert back.metrics[0].double_value == 412.5
