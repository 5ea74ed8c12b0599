"""A real PostgreSQL for tests and the bench, from Debian's `postgresql` package.

PostgreSQL refuses to run as root, and the suite runs as root: the cluster is created and run as
the unprivileged `postgres` system user (the package creates it) through `runuser`, in a temporary
directory that user owns, on a free port of 127.0.0.1 with trust authentication (tests only), and
removed afterwards. fsync stays on: the figures and the crash tests mean what they would on a
real server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from tests.support.service import StartedService
from tests.support.testing import free_port


def _pg_bin() -> Path:
    """The newest installed major version's binaries (Debian keeps each under its own directory)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
USER = "postgres"


def postgres_available() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return (PG_BIN / "initdb").exists() and shutil.which("runuser") is not None


class Postgres(StartedService):
    """One PostgreSQL server; `dsn(db)` for a database in it, `create_db(name)` makes one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.dir / "data"
        user = pwd.getpwnam(USER)
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        self._started = False

    def _as_postgres(self, *cmd: str, timeout_s: float = 120.0) -> str:
        out = subprocess.run(
            ["runuser", "-u", USER, "--", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {out.stderr or out.stdout}")
        return out.stdout

    def start(self) -> Self:
        self._as_postgres(
            # UTF-8 whatever the machine's locale: where LANG is unset initdb would make SQL_ASCII
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync",
            "--encoding=UTF8", "--locale=C",
        )  # fmt: skip
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
            " -c shared_buffers=128MB -c max_connections=50"
        )
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-o",
            opts,
            "-w",
            "start",
        )
        self._started = True
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ok = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ok.returncode == 0:
                return self
            time.sleep(0.2)
        raise TimeoutError(f"PostgreSQL on {self.port} not ready")

    @property
    def pid(self) -> int:
        """The postmaster's process id (its backends are its children)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{db}"

    def create_db(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def close(self) -> None:
        if self._started:
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                self._as_postgres(
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                    timeout_s=60,
                )
            self._started = False
        shutil.rmtree(self.dir, ignore_errors=True)
