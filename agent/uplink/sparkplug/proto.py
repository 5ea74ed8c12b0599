"""The Sparkplug B payload schema as Python classes, generated from `shared/spec/sparkplug_b.proto`.

`sparkplug_b_pb2.py` and its type stub `sparkplug_b_pb2.pyi` are generated and committed, so a
gateway needs only the `protobuf` runtime, never a compiler. They were made, from this folder, with

    python -m grpc_tools.protoc --proto_path=../../../../shared/spec \\
        --python_out=. --pyi_out=. sparkplug_b.proto

(grpcio-tools 1.85.1, which embeds protoc 7.35.1; `tests/test_sparkplug_proto.py` regenerates them
when grpcio-tools is installed and checks the bytes are the same). The generated code checks at
import that the `protobuf` runtime is at least the generator's version (7.35).
"""

from __future__ import annotations

from water_edge.agent.uplink.sparkplug.sparkplug_b_pb2 import DataType, Payload

__all__ = ["DataType", "Payload"]
