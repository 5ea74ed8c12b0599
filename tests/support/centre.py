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

import orjson

from tests.support.testing import wait_until
from water_edge.centre.loadgen import payload
from water_edge.centre.payload import Message, parse
from water_edge.centre.store import connect


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
    with connect(dsn) as conn:  # the ingest's own: text as text in any database encoding
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


def messages(gateway: str, seqs: range | list[int], tags: int = 10, epoch: int = 1) -> list[Message]:
    """Data messages of stream s1/<gateway>/plc1 with these seqs, as the ingest parses them (read at
    10^18 + seq ns; a seq of 10^9 or more wraps there, so that a seq up to 2^63 - 1 keeps `ts` in range)."""
    return [
        parse(
            f"water/s1/{gateway}/plc1",
            payload("s1", gateway, seq, 10**18 + seq % 10**9, tags, epoch=epoch),
        )
        for seq in seqs
    ]


def eviction(gateway: str, seq: int, first: int, last: int, span: object = None, epoch: int = 1) -> Message:
    """The gateway's `buffer_eviction` event naming plc1's seqs first..last (or `span` as given)."""
    streams = {"plc1": [first, last] if span is None else span}
    body = {
        "v": 2, "epoch": epoch, "stream": "events", "seq": seq, "site": "s1", "gateway": gateway,
        "sent_ns": 1,
        "events": [{"kind": "buffer_eviction", "source": "buffer", "ts": 1, "severity": "warning",
                    "score": None, "detail": {"reason": "quota", "streams": streams}}],
    }  # fmt: skip
    return parse(f"water/s1/{gateway}/events", orjson.dumps(body))
