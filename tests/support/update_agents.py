"""The agent as the root updater's health check sees it, in the update tests' temporary A/B layout.

    with release_agents(gateway.root, broken={"0.2.0-badbad00"}) as status:
        state = gateway.run(status)

`status` is a status socket that answers as a healthy agent of whichever release `current` names,
as a process of its own per release (a new pid after a switch), and does not answer while
`current` names a release in `broken` (one that crashes at start) or none.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
from collections.abc import Collection, Iterator
from pathlib import Path

import orjson

from water_edge.agent.update.layout import Layout


@contextlib.contextmanager
def release_agents(root: Path, broken: Collection[str] = ()) -> Iterator[Path]:
    """The status socket's path, answering as the agent of the release `root/current` names."""
    folder = Path(tempfile.mkdtemp(prefix="st-"))  # AF_UNIX paths are short; tmp_path's are long
    path = folder / "status.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    server.settimeout(0.1)
    stop = threading.Event()
    pids: dict[str, int] = {}

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                release = Layout(root).release(root / "current")
                if release is None or release.name in broken:
                    continue  # closed unanswered: no agent there
                conn.recv(4096)
                pid = pids.setdefault(release.name, 1000 + len(pids))
                doc = {"agent": {"version": release.version, "pid": pid}, "drivers": [],
                       "pipeline": {"committed_events": 1}, "uplink": {"state": "online"}}  # fmt: skip
                conn.sendall(orjson.dumps(doc) + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join()
        server.close()
        shutil.rmtree(folder)
