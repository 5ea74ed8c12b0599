"""`edge-agent` run in the test's own process: its exit status and what it printed, as a
subprocess would give them, without a new interpreter importing NumPy and SciPy for every call
(2-3 s each for the leak commands)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from water_edge.agent.cli import main


@dataclass(frozen=True)
class CliRun:
    returncode: int
    stdout: str
    stderr: str


def edge_agent(*args: str) -> CliRun:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return CliRun(code, out.getvalue(), err.getvalue())


async def edge_agent_process(*args: str, timeout_s: float = 120.0) -> CliRun:
    """`edge-agent ARGS` as its own process, awaited: the test's event loop keeps serving the
    simulated devices the command talks to (firmware-sim's meters, its OPC UA server)."""
    import asyncio
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "water_edge.agent.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    return CliRun(proc.returncode or 0, out.decode(), err.decode())
