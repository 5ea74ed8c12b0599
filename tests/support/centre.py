"""Running the reference ingest (`edge-centre`) in tests: consumer processes and database queries."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tests.support.testing import wait_until


@dataclass
class IngestProcess:
    """One `edge-centre ingest` process; its log is a file the test can read."""

    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> IngestProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "water_edge.centre.cli", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_subscribed(self, times: int = 1, timeout_s: float = 30.0) -> None:
        """Until the log shows `times` subscriptions in all (1 after the first start, 2 after a restart)."""

        def subscribed() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ingest exited ({self.process.returncode}):\n{self.log()}")
            return self.log().count("ingest.connected") >= times

        wait_until(subscribed, timeout_s, what=lambda: f"ingest subscribed\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """kill -9: nothing of what it holds in memory is acknowledged."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def ingest_process(tmp: Path, name: str, dsn: str, brokers: list[str], *extra: str) -> IngestProcess:
    args = ["--dsn", dsn, "ingest", "--client-id", name, "--batch-ms", "50", "--gap-check-s", "1"]
    for uri in brokers:
        args += ["--broker", uri]
    return IngestProcess([*args, *extra], tmp / f"{name}.log")


def committed_in_last_run(log: str) -> int:
    """Messages an ingest process committed in its last run, from its `ingest.stopped` line."""
    found = re.findall(r"ingest\.stopped.*?committed=(\d+)", log)
    return int(found[-1]) if found else 0


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def committed_seqs(dsn: str) -> dict[tuple[str, str, str], list[int]]:
    """Every (site, gateway, stream) with its committed seqs, ascending."""
    out: dict[tuple[str, str, str], list[int]] = {}
    rows = query(
        dsn,
        "SELECT s.site, s.gateway, s.stream, m.seq FROM messages m"
        " JOIN streams s ON s.id = m.stream_id ORDER BY 1, 2, 3, 4",
    )
    for site, gateway, stream, seq in rows:
        out.setdefault((site, gateway, stream), []).append(seq)
    return out
