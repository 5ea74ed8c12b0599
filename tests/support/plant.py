"""Starts the firmware-sim plant (`edge-sim run`) as a real subprocess on a free port for a test.

    with running_plant(seed=1) as plant:
        plant.host, plant.port   # the Modbus TCP endpoint

The sim announces itself by writing its endpoints file only once the port listens, so waiting
for the file is waiting for readiness. The process is terminated (SIGTERM, then killed) on exit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.testing import wait_until

# A ceiling, not a wait: the OPC UA server alone imports and builds its address space in ~8 s,
# 20 s on a machine busy with other work.
START_TIMEOUT_S = 60.0


@dataclass
class Plant:
    """A running `edge-sim run` subprocess and its Modbus TCP endpoint."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    endpoints: dict[str, dict[str, object]] = field(default_factory=dict)
    own_dir: Path | None = None  # the work directory made for it, removed once it stopped

    def _forget_dir(self) -> None:
        if self.own_dir is not None and self.process.poll() is not None:
            shutil.rmtree(self.own_dir, ignore_errors=True)

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crash or power cut would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> int:
        """Graceful stop (SIGTERM); returns the exit code."""
        try:
            return self._stop()
        finally:
            self._forget_dir()

    def _stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait(timeout=10)
        return self.process.returncode


def start_plant(
    *,
    seed: int = 0,
    bench_tags: int = 0,
    port: int = 0,
    host: str = "127.0.0.1",
    workdir: Path | None = None,
    components: str = "none",
    scenario: str | Path | None = None,
    speed: float | None = None,
    max_registers: int | None = None,
    any_unit: bool = False,
    opcua_port: int | None = None,
) -> Plant:
    """Start `edge-sim run` and wait until it listens. `port=0`: a free port, chosen by the OS.

    `components`: what to start besides the Modbus TCP PLC, as `edge-sim run --components` takes
    it ("none" by default, so a Modbus test does not pay for an OPC UA server). `speed`: model
    seconds per wall second (`edge-sim run --speed`); below 1 a test that must read several views
    within one 0.1 s model tick gets the time to. `max_registers`: the PLC refuses longer reads
    (`edge-sim run --max-registers`). `any_unit`: the PLC answers every unit ID (`--any-unit`).
    `opcua_port`: the OPC UA server's port (EDGE_SIM_OPCUA_PORT; 0: a free one, beside a demo on
    4840).
    """
    directory = Path(workdir or tempfile.mkdtemp(prefix="edge-sim-"))
    endpoints_file = directory / f"endpoints-{os.getpid()}-{time.monotonic_ns()}.json"
    cmd = [
        sys.executable, "-m", "water_edge.sim.cli", "run", "--host", host, "--port", str(port),
        "--seed", str(seed), "--bench-tags", str(bench_tags),
        "--endpoints-file", str(endpoints_file), "--components", components,
        "--workdir", str(directory),
        *(["--scenario", str(scenario)] if scenario is not None else []),
        *(["--speed", str(speed)] if speed is not None else []),
        *(["--max-registers", str(max_registers)] if max_registers is not None else []),
        *(["--any-unit"] if any_unit else []),
    ]  # fmt: skip
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "firmware-sim"), env.get("PYTHONPATH", "")])
    if opcua_port is not None:
        env["EDGE_SIM_OPCUA_PORT"] = str(opcua_port)
    # stderr goes to a file, not a pipe: a pipe nobody reads fills up and stalls a long-running sim.
    log_path = endpoints_file.with_suffix(".log")
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file, env=env)

    def announced() -> bool:
        if process.poll() is not None:
            err = log_path.read_text(errors="replace")
            raise RuntimeError(f"edge-sim exited with {process.returncode}: {err}")
        return endpoints_file.exists()

    try:
        wait_until(announced, START_TIMEOUT_S, what="edge-sim announcing its endpoints")
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if workdir is None:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    endpoints = json.loads(endpoints_file.read_text(encoding="utf-8"))
    modbus = endpoints["modbus_tcp"]
    own = directory if workdir is None else None
    return Plant(process, str(modbus["host"]), int(modbus["port"]), endpoints, own_dir=own)


@contextmanager
def running_plant(**kwargs: object) -> Iterator[Plant]:
    """`start_plant` as a context manager that always stops the process."""
    plant = start_plant(**kwargs)  # type: ignore[arg-type]
    try:
        yield plant
    finally:
        plant.stop()
