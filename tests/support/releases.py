"""Real releases of the agent for the self-update tests, and a stand-in for systemd.

- `dependency_wheelhouse(into)`: the agent's runtime dependencies as wheels, repacked from the
  distributions installed in the running venv (the files each one's RECORD lists, with a fresh
  RECORD). Offline, and the same bytes the tests run on; a real release machine downloads them for
  the gateway's platform instead (docs/updates.md).
- `agent_wheel(into, version, break_it=...)`: a real second build of the agent: the tree copied,
  its version bumped (and, for the broken build, its start made to fail), `pip wheel`.
- `ServiceManager`: what systemd does for the agent on a gateway, for a test without systemd:
  runs `<root>/current/bin/edge-agent run` (resolving the link at every start, like ExecStart),
  restarts it when it exits (Restart=, counted in a file the updater reads as systemd's NRestarts)
  or when the restart command touches its trigger file (`systemctl restart`), and starts
  `edge-agent update run` when the agent writes an update request (edge-agent-update.path).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata as md
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
AGENT = "water-edge-agent"


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(name: str = AGENT, extras: tuple[str, ...] = ("serial",)) -> list[md.Distribution]:
    """The installed distributions `name` needs at run time (its requirements, recursively)."""
    seen: dict[str, md.Distribution] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(name, extras)]
    while todo:
        dist_name, dist_extras = todo.pop()
        if _key(dist_name) in seen:
            continue
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            continue
        seen[_key(dist_name)] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in ("", *dist_extras)
            ):
                continue
            todo.append((req.name, tuple(req.extras)))
    return [d for k, d in seen.items() if k != _key(name)]


def _wheel_tag(dist: md.Distribution) -> str:
    text = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise ValueError(f"{dist.metadata['Name']} has no WHEEL tag (not installed from a wheel)")
    py, abi, plat = zip(*(t.split("-") for t in tags), strict=True)
    return "-".join(".".join(dict.fromkeys(part)) for part in (py, abi, plat))


def write_wheel(wheel: Path, files: Iterable[tuple[str, bytes]], info_dir: str) -> Path:
    """A wheel at `wheel` holding `files` ((path inside the wheel, bytes), read one at a time) and
    the RECORD of them in `info_dir` (`name-version.dist-info`)."""
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        for rel, data in files:
            zf.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            writer.writerow((rel, f"sha256={digest}", str(len(data))))
        writer.writerow((f"{info_dir}/RECORD", "", ""))
        zf.writestr(f"{info_dir}/RECORD", record.getvalue())
    return wheel


def repack(dist: md.Distribution, into: Path) -> Path:
    """A wheel of an installed distribution: the files its RECORD lists inside site-packages."""
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    base = Path(str(dist.locate_file("")))
    kept: list[str] = []
    info_dir = None
    for entry in dist.files or []:
        rel = str(entry)
        if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
            continue
        if rel.endswith((".dist-info/RECORD", ".dist-info/INSTALLER", ".dist-info/REQUESTED")):
            info_dir = rel.rsplit("/", 1)[0]
            continue
        if not rel.endswith(".dist-info/direct_url.json"):
            kept.append(rel)
    if info_dir is None:
        raise ValueError(f"{dist.metadata['Name']}: no RECORD")
    wheel = into / f"{name}-{dist.version}-{_wheel_tag(dist)}.whl"
    return write_wheel(wheel, ((rel, (base / rel).read_bytes()) for rel in kept), info_dir)


def dependency_wheelhouse(into: Path) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    return [repack(dist, into) for dist in runtime_closure()]


def copy_of_tree(into: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A copy of this tree to build from: setuptools leaves build/ behind in the tree it builds,
    and a stale one would be packed into the next wheel."""
    shutil.copytree(
        ROOT,
        into,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", *skip
        ),
    )
    return into


def build_wheel(source: Path, out: Path) -> Path:
    """`pip wheel` of the agent from `source`, offline (no dependencies, no build isolation)."""
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if built.returncode != 0:
        raise RuntimeError(f"pip wheel {source} failed:\n{built.stderr}")
    (wheel,) = out.glob("water_edge_agent-*.whl")
    return wheel


def agent_wheel(into: Path, version: str, *, break_it: bool = False) -> Path:
    """A real build of the agent at `version` (from a copy of this tree); `break_it`: it cannot start."""
    source = copy_of_tree(into / f"src-{version}", skip=("bench",))
    init = source / "agent" / "__init__.py"
    init.write_text(re.sub(r'__version__ = ".*"', f'__version__ = "{version}"', init.read_text()))
    if break_it:
        runtime = source / "agent" / "runtime.py"
        text = runtime.read_text()
        marker = "async def run_agent(config: Config) -> int:\n"
        runtime.write_text(
            text.replace(marker, marker + '    raise RuntimeError("deliberately broken build")\n', 1)
        )
    wheel = build_wheel(source, into / f"wheel-{version}")
    shutil.rmtree(source)
    return wheel


class ServiceManager:
    """systemd's part for the agent and its updater, in a thread (see the module docstring)."""

    def __init__(self, root: Path, config: Path, state_dir: Path, updater_args: list[str], log: Path) -> None:
        self.root, self.config, self.log = root, config, log
        self.request = state_dir / "update" / "request.json"
        self.trigger = root.parent / "restart-requested"
        self.restart_command = f"touch {self.trigger}"
        self.restarts = 0  # automatic restarts, after the agent exited
        self.restarts_file = root.parent / "restarts"
        self.restarts_file.write_text("0\n")
        self.updater_args = updater_args
        self.process: subprocess.Popen[bytes] | None = None
        self.starts: list[str] = []  # the release each start ran
        self.updater_runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-systemd", daemon=True)
        self._updater: threading.Thread | None = None

    def start(self) -> ServiceManager:
        self._thread.start()
        return self

    def _env(self) -> dict[str, str]:
        """A release runs its own code: a PYTHONPATH the tests run with (a worktree's checkout) is
        only for the first release, which is this venv; later ones would import it instead of
        themselves and answer with the old version."""
        env = dict(os.environ)
        if (self.root / "current").resolve() != Path(sys.prefix).resolve():
            env.pop("PYTHONPATH", None)
        return env

    def _spawn(self) -> None:
        exe = self.root / "current" / "bin" / "edge-agent"
        self.starts.append((self.root / "current").resolve().name)
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts[-1]}\n".encode())
            self.process = subprocess.Popen(
                [str(exe), "run", "-c", str(self.config)], stdout=out, stderr=out, env=self._env()
            )

    def _terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def _run_updater(self) -> None:
        exe = self.root / "current" / "bin" / "edge-agent"
        with self.log.open("ab") as out:
            out.write(b"--- updater\n")
            argv = [str(exe), "update", "run", "-c", str(self.config), *self.updater_args]
            argv += ["--restart-command", self.restart_command]
            argv += ["--restarts-command", f"cat {self.restarts_file}"]
            subprocess.run(argv, stdout=out, stderr=out, check=False, timeout=600, env=self._env())

    def _loop(self) -> None:
        self._spawn()
        while not self._stop.is_set():
            if self.trigger.exists():
                self.trigger.unlink()
                self._terminate()
                self._spawn()
            elif self.process is not None and self.process.poll() is not None:
                time.sleep(0.5)  # RestartSec
                self._spawn()
                self.restarts += 1
                self.restarts_file.write_text(f"{self.restarts}\n")
            if self.request.exists() and (self._updater is None or not self._updater.is_alive()):
                self.updater_runs += 1
                self._updater = threading.Thread(target=self._run_updater, name="fake-updater", daemon=True)
                self._updater.start()
                time.sleep(0.5)  # the updater takes the request first thing
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._terminate()
        if self._updater is not None:
            self._updater.join(60)

    def wait_updater(self, condition: Callable[[], bool], timeout: float) -> None:
        from tests.support.testing import wait_until

        wait_until(condition, timeout, every_s=0.2, what=lambda: self.log.read_text(errors="replace")[-3000:])
