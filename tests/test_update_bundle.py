"""What a gateway trusts in a release bundle: a manifest signed by a release key it lists, and only
the wheels that manifest names with their sha256. A bundle from an unknown key, a manifest changed
after signing, or a wheel swapped inside is refused with a message saying which; `edge-agent update
apply` (the USB stick path) refuses it before asking the updater for anything. `edge-agent update
rollback` switches to the previous release and back, by hand."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import datetime as dt
import http.server
import io
import os
import pwd
import socket
import ssl
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from tests.support.testing import write_agent_config
from tests.support.update_agents import release_agents
from water_edge.agent.cli import main
from water_edge.agent.remote.audit import read_audit
from water_edge.agent.remote.result import CommandFailedError, CommandRefusedError, CommandResult
from water_edge.agent.update.bundle import (
    BundleError,
    build_bundle,
    extract_wheels,
    load_release_keys,
    public_key_text,
    read_manifest,
)
from water_edge.agent.update.config import UpdateSection
from water_edge.agent.update.receive import UpdateReceiver
from water_edge.agent.update.state import UpdateFiles, read_json
from water_edge.core import envelope
from water_edge.core.digests import sha256_file
from water_edge.provisioning.ca import CertificateAuthority


def _wheels(folder: Path) -> list[Path]:
    folder.mkdir()
    agent = folder / "water_edge_agent-0.2.0-py3-none-any.whl"
    agent.write_bytes(b"the agent's wheel" * 100)
    dep = folder / "orjson-3.10.0-cp311-cp311-linux_aarch64.whl"
    dep.write_bytes(b"a dependency" * 100)
    return [agent, dep]


def _bundle(tmp: Path, key: Ed25519PrivateKey, key_id: str = "rel-2026") -> Path:
    out = tmp / "agent-0.2.0.tar"
    build_bundle(
        _wheels(tmp / "w"), [], key, key_id, out, python="3.11", config_schema=(1, 1), outbox_schema=1
    )
    return out


def _rewrite(bundle: Path, name: str, content: bytes) -> None:
    """Replace one member of the (uncompressed) bundle, keeping the rest byte for byte."""
    with tarfile.open(bundle) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar]  # type: ignore[union-attr]
    with tarfile.open(bundle, "w:", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            body = content if member.name == name else data
            member.size = len(body)
            tar.addfile(member, io.BytesIO(body))


def _keys(tmp: Path, *keys: tuple[str, Ed25519PrivateKey]) -> Path:
    path = tmp / "release-keys"
    path.write_text("# trusted\n" + "".join(f"{n} {public_key_text(k)}\n" for n, k in keys))
    return path


def test_a_bundle_is_trusted_only_as_signed(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    bundle = _bundle(tmp_path, key)
    keys = load_release_keys(_keys(tmp_path, ("rel-2026", key)))
    manifest = read_manifest(bundle, keys)
    assert manifest.version == "0.2.0"
    assert {w.file for w in manifest.wheels} == {p.name for p in (tmp_path / "w").iterdir()}
    assert sorted(extract_wheels(bundle, manifest, tmp_path / "out")) == sorted(
        w.file for w in manifest.wheels
    )

    other = load_release_keys(_keys(tmp_path, ("rel-other", Ed25519PrivateKey.generate())))
    with pytest.raises(BundleError, match="'rel-2026', which this gateway does not trust"):
        read_manifest(bundle, other)
    # The same key id with another key: the signature does not verify.
    impostor = load_release_keys(_keys(tmp_path, ("rel-2026", Ed25519PrivateKey.generate())))
    with pytest.raises(BundleError, match="does not verify with release key 'rel-2026'"):
        read_manifest(bundle, impostor)


def test_a_changed_manifest_or_a_swapped_wheel_is_refused(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    keys = load_release_keys(_keys(tmp_path, ("rel-2026", key)))
    bundle = _bundle(tmp_path, key)
    manifest = read_manifest(bundle, keys)
    with tarfile.open(bundle) as tar:
        text = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
    tampered = tmp_path / "tampered.tar"
    tampered.write_bytes(bundle.read_bytes())
    _rewrite(tampered, "manifest.json", text.replace(b'"0.2.0"', b'"9.9.9"'))
    with pytest.raises(BundleError, match="does not verify"):
        read_manifest(tampered, keys)

    swapped = tmp_path / "swapped.tar"
    swapped.write_bytes(bundle.read_bytes())
    name = "wheels/water_edge_agent-0.2.0-py3-none-any.whl"
    _rewrite(swapped, name, b"something else!!" * 106 + b"x" * 4)  # same size, other bytes
    assert read_manifest(swapped, keys) == manifest  # the manifest is intact ...
    with pytest.raises(BundleError, match="sha256 does not match the signed manifest"):
        extract_wheels(swapped, manifest, tmp_path / "out2")  # ... the wheel is not
    assert not (tmp_path / "out2" / name.split("/")[1]).exists()


def test_a_bundle_costs_no_memory_for_the_members_behind_its_manifest_before_it_is_trusted(
    tmp_path: Path,
) -> None:
    """The signature is checked by the agent (an `update` command needs an operator key, not a
    release key) and by the root updater: finding the manifest used to load the header of every
    member first, and a bundle of max_bundle_bytes (512 MiB) holds a million of them, some
    400 MB of Python objects on a gateway, before any signature had said who made it."""
    key = Ed25519PrivateKey.generate()
    bundle = _bundle(tmp_path, key)
    with tarfile.open(bundle, "a") as tar:
        for i in range(10_000):
            tar.addfile(tarfile.TarInfo(f"padding/{i}"))
    other = load_release_keys(_keys(tmp_path, ("rel-2026", Ed25519PrivateKey.generate())))
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match="does not verify"):
            read_manifest(bundle, other)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak} bytes to refuse a bundle of {bundle.stat().st_size}"

    # The manifest and its signature lead the bundle, as `release bundle` writes them.
    with tarfile.open(bundle) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar]  # type: ignore[union-attr]
    reordered = tmp_path / "reordered.tar"
    with tarfile.open(reordered, "w:", format=tarfile.PAX_FORMAT) as tar:
        for member, data in [*members[2:3], *members[:2], *members[3:5]]:
            tar.addfile(member, io.BytesIO(data))
    keys = load_release_keys(_keys(tmp_path, ("rel-2026", key)))
    with pytest.raises(BundleError, match=r"does not start with manifest\.json and manifest\.sig"):
        read_manifest(reordered, keys)
    assert read_manifest(bundle, keys).version == "0.2.0"


def test_update_apply_refuses_an_untrusted_bundle_and_requests_a_trusted_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trusted = Ed25519PrivateKey.generate()
    keys = _keys(tmp_path, ("rel-2026", trusted))
    config = write_agent_config(
        tmp_path, extra=f'[update]\nrelease_keys = "{keys}"\nroot = "{tmp_path / "opt"}"\n'
    )
    files = UpdateFiles(tmp_path / "state")
    where = ["-c", str(config), "--state-dir", str(tmp_path / "state")]  # root: its own, not the config's
    untrusted_dir = tmp_path / "untrusted"
    untrusted_dir.mkdir()
    untrusted = _bundle(untrusted_dir, Ed25519PrivateKey.generate())
    assert main(["update", "apply", str(untrusted), *where]) != 0
    assert "refused" in capsys.readouterr().err
    assert not files.request.exists()

    good = _bundle(tmp_path, trusted)
    assert main(["update", "apply", str(good), *where]) == 0
    assert "version 0.2.0, signed by rel-2026; requested" in capsys.readouterr().out
    assert files.request.exists()  # what edge-agent-update.path starts the updater on

    assert main(["update", "status", *where]) == 0
    assert "not installed in" in capsys.readouterr().out  # no A/B layout in this temp dir


def _release(root: Path, name: str, version: str) -> Path:
    path = root / "releases" / name
    path.mkdir(parents=True)
    (path / "release.json").write_text(f'{{"version": "{version}"}}')
    return path


def test_a_technician_rolls_back_by_hand_and_forward_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "opt"
    _release(root, "0.1.0-aaaa", "0.1.0")
    _release(root, "0.2.0-bbbb", "0.2.0")
    (root / "current").symlink_to("releases/0.2.0-bbbb")
    (root / "previous").symlink_to("releases/0.1.0-aaaa")
    restarts = tmp_path / "restarts"
    # Each release starts and passes the health check a rollback by hand is judged by.
    with release_agents(root) as status:
        config = write_agent_config(tmp_path, status_socket=status, extra=f'[update]\nroot = "{root}"\n')
        where = ["-c", str(config), "--state-dir", str(tmp_path / "state")]
        args = [*where, "--now", "--restart-command", f"sh -c 'echo x >> {restarts}'"]

        assert main(["update", "rollback", *args]) == 0
        assert (root / "current").resolve().name == "0.1.0-aaaa"
        assert (root / "previous").resolve().name == "0.2.0-bbbb"  # the way forward again
        assert restarts.read_text().count("x") == 1
        assert "rolled back" in capsys.readouterr().out
        assert main(["update", "status", *where]) == 0
        out = capsys.readouterr().out
        assert "current  0.1.0-aaaa" in out
        assert "previous 0.2.0-bbbb" in out

        assert main(["update", "rollback", *args]) == 0
        assert (root / "current").resolve().name == "0.2.0-bbbb"
        outcomes = [(a["action"], a["outcome"]) for a in read_audit(tmp_path / "state" / "audit.log")]
        assert outcomes.count(("update", "rolled_back")) == 2

        (root / "previous").unlink()
        assert main(["update", "rollback", *args]) != 0
        assert "no previous release" in capsys.readouterr().out
        assert (root / "current").resolve().name == "0.2.0-bbbb"


def test_a_second_update_while_the_first_still_waits_for_the_updater_is_refused_not_swapped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two signed `update` commands close together (two operators, a retried wave): the second used
    to overwrite request.json before the updater took the first, whose command had been answered
    `staged` and whose update then never happened, with no event to say so."""
    trusted = Ed25519PrivateKey.generate()
    keys = _keys(tmp_path, ("rel-2026", trusted))
    config = write_agent_config(
        tmp_path, extra=f'[update]\nrelease_keys = "{keys}"\nroot = "{tmp_path / "opt"}"\n'
    )
    files = UpdateFiles(tmp_path / "state")
    where = ["-c", str(config), "--state-dir", str(tmp_path / "state")]  # root: its own, not the config's
    receiver = UpdateReceiver(UpdateSection(release_keys=keys), files)
    operator = Ed25519PrivateKey.generate()
    bundles = []
    for day, name in enumerate(("a", "b"), 1):
        (tmp_path / name).mkdir()
        bundle = tmp_path / name / "agent-0.2.0.tar"
        build_bundle(
            _wheels(tmp_path / name / "w"), [], trusted, "rel-2026", bundle, python="3.11",
            config_schema=(1, 1), outbox_schema=1, now=dt.datetime(2026, 12, day, tzinfo=dt.UTC),
        )  # fmt: skip
        sha = sha256_file(bundle)
        data = base64.b64encode(bundle.read_bytes()).decode()
        chunk = {"transfer": sha, "index": 0, "count": 1, "data": data}
        asyncio.run(
            receiver.chunk(envelope.parse(envelope.sign(operator, "ops", "update_chunk", "s/g", chunk)))
        )
        bundles.append((bundle, sha))
    (_, first_sha), (second, second_sha) = bundles

    def update(sha: str) -> CommandResult:
        signed = envelope.sign(operator, "ops", "update", "s/g", {"transfer": sha})
        return asyncio.run(receiver.update(envelope.parse(signed)))

    assert update(first_sha).detail["staged"] == first_sha
    with pytest.raises(CommandFailedError, match=f"another update request \\({first_sha[:16]}, command "):
        update(second_sha)
    assert read_json(files.request)["sha256"] == first_sha  # type: ignore[index]

    # On site, the same: the technician is told what waits, nothing is swapped.
    assert main(["update", "apply", str(second), *where]) != 0
    assert "is waiting for the updater" in capsys.readouterr().err
    assert read_json(files.request)["sha256"] == first_sha  # type: ignore[index]
    files.take_request()  # the updater took it: the next one is welcome
    assert main(["update", "apply", str(second), *where]) == 0
    assert read_json(files.request)["sha256"] == second_sha  # type: ignore[index]


def test_abandoned_transfers_never_hold_more_than_one_bundle_of_the_state_disk(tmp_path: Path) -> None:
    """A rollout given up halfway over a poor link, again and again (or a key sending parts of ever
    new transfers): the parts used to stay for good, max_bundle_bytes each, on the disk the outbox
    shares. Together they now stay within max_bundle_bytes; the transfer least recently added to
    gives way."""
    limit = 2**20
    files = UpdateFiles(tmp_path / "state")
    receiver = UpdateReceiver(UpdateSection(release_keys=tmp_path / "keys", max_bundle_bytes=limit), files)
    operator = Ed25519PrivateKey.generate()

    def send(transfer: str, index: int) -> None:
        data = base64.b64encode(bytes(300 * 1024)).decode()
        args = {"transfer": transfer, "index": index, "count": 4, "data": data}
        signed = envelope.sign(operator, "ops", "update_chunk", "s/g", args)
        assert asyncio.run(receiver.chunk(envelope.parse(signed))).status == "ok"

    abandoned, current = "a" * 64, "b" * 64
    for index in range(3):
        send(abandoned, index)
    for index in range(3):
        send(current, index)
        held = sum(p.stat().st_size for p in files.chunks.rglob("*.part"))
        assert held <= limit, f"{held} bytes of parts held after part {index} of the new transfer"
    assert sorted(p.name for p in files.chunks.iterdir()) == [current]
    assert len(list((files.chunks / current).glob("*.part"))) == 3


# ---------------------------------------------------------------- update by URL: where the gateway fetches


@contextlib.contextmanager
def _web(
    body: bytes = b"", redirect: str | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[tuple[str, list[str]]]:
    """A web server on a free port of 127.0.0.1 answering GET with `body` or a redirect; yields its
    base URL and the paths it was asked for."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(302 if redirect else 200)
            if redirect:
                self.send_header("Location", redirect)
            self.send_header("Content-Length", str(0 if redirect else len(body)))
            self.end_headers()
            if not redirect:
                self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def _update_by_url(receiver: UpdateReceiver, url: str, sha: str) -> CommandResult:
    signed = envelope.sign(Ed25519PrivateKey.generate(), "ops", "update", "s/g", {"url": url, "sha256": sha})
    return asyncio.run(receiver.update(envelope.parse(signed)))


def test_an_update_url_is_fetched_over_https_only_unless_http_is_allowed(tmp_path: Path) -> None:
    """A key allowed `update` made the gateway GET any http:// URL of the plant network (a PLC's
    web page, a historian's API) and follow any redirect; the bundle's signature protects the
    gateway, not what the request does on the way."""
    trusted = Ed25519PrivateKey.generate()
    keys = _keys(tmp_path, ("rel-2026", trusted))
    bundle = _bundle(tmp_path, trusted)
    sha = sha256_file(bundle)
    files = UpdateFiles(tmp_path / "state")
    by_default = UpdateReceiver(UpdateSection(release_keys=keys), files)
    with _web(bundle.read_bytes()) as (plain, asked):
        with pytest.raises(CommandRefusedError, match=r"only https:// URLs are fetched") as refused:
            _update_by_url(by_default, f"{plain}/agent.tar", sha)
        assert refused.value.code == "bad_url"
        assert asked == [], "the gateway sent the request anyway"

        # https that redirects to http is held to the same rule.
        ca = CertificateAuthority.init(tmp_path / "ca", "release server CA")
        cert = tmp_path / "web.pem"
        cert.write_bytes(ca.issue_server("web", ["127.0.0.1"], tmp_path / "web.key"))
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, tmp_path / "web.key")
        trusting = UpdateReceiver(UpdateSection(release_keys=keys, ca_file=tmp_path / "ca" / "ca.pem"), files)
        with _web(redirect=f"{plain}/agent.tar", tls=tls) as (secure, redirected):
            with pytest.raises(CommandRefusedError, match=r"only https:// URLs"):
                _update_by_url(trusting, f"{secure}/agent.tar", sha)
            assert redirected == ["/agent.tar"]
        assert asked == []
        with _web(bundle.read_bytes(), tls=tls) as (secure, _):
            assert _update_by_url(trusting, f"{secure}/agent.tar", sha).detail["staged"] == sha
        files.take_request()

        allowing = UpdateReceiver(UpdateSection(release_keys=keys, allow_http=True), files)
        assert _update_by_url(allowing, f"{plain}/agent.tar", sha).detail["staged"] == sha
        assert asked == ["/agent.tar"]


def test_download_hosts_hold_the_url_and_every_redirect(tmp_path: Path) -> None:
    trusted = Ed25519PrivateKey.generate()
    keys = _keys(tmp_path, ("rel-2026", trusted))
    bundle = _bundle(tmp_path, trusted)
    sha = sha256_file(bundle)
    section = UpdateSection(release_keys=keys, allow_http=True, download_hosts=("LOCALHOST",))
    receiver = UpdateReceiver(section, UpdateFiles(tmp_path / "state"))
    with _web(bundle.read_bytes()) as (other, asked):
        port = other.rsplit(":", 1)[1]
        with pytest.raises(CommandRefusedError, match=r"127.0.0.1 is not in \[update\] download_hosts"):
            _update_by_url(receiver, f"{other}/agent.tar", sha)
        with _web(redirect=f"{other}/agent.tar") as (redirecting, _):
            listed = redirecting.replace("127.0.0.1", "localhost")
            with pytest.raises(CommandRefusedError, match=r"not in \[update\] download_hosts"):
                _update_by_url(receiver, f"{listed}/agent.tar", sha)
        assert asked == [], "the gateway fetched from a host it does not list"
        assert _update_by_url(receiver, f"http://localhost:{port}/agent.tar", sha).detail["staged"] == sha
    for wrong in ("https://releases.example", "releases.example:443", "releases.example/bundles"):
        with pytest.raises(ValueError, match="not a host name or address"):
            UpdateSection(download_hosts=(wrong,))
    assert UpdateSection(download_hosts=("[fd00::1]",)).download_hosts == ("fd00::1",)


def test_a_request_the_agent_cannot_read_is_never_overwritten_by_a_command(tmp_path: Path) -> None:
    """`update apply` run as root leaves request.json 0640 root:root; the agent, reading it as its own
    user, took it for no request at all and a signed `update` command replaced it."""
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no unprivileged user 'nobody' on this machine")
    if os.geteuid() != 0:
        pytest.skip("needs root to write the request as root and check as another user")
    files = UpdateFiles(tmp_path / "state")
    files.write_request({"action": "apply", "sha256": "a" * 64, "requested_by": "technician"})
    receiver = UpdateReceiver(UpdateSection(), files)
    pid = os.fork()
    if pid == 0:  # the agent's side, as an unprivileged user: it can reach the file, not read it
        code = 3
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            receiver.no_other_request("b" * 64)
            code = 1  # taken for no request
        except CommandFailedError as exc:
            code = 0 if "an update request the agent cannot read (Permission denied)" in str(exc) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    verdict = {0: "refused", 1: "taken for no request", 2: "refused with another message", 3: "failed"}
    assert verdict[os.waitstatus_to_exitcode(status)] == "refused"
    assert read_json(files.request)["requested_by"] == "technician"  # type: ignore[index]


def test_a_download_ends_at_download_timeout_s_however_steadily_it_trickles(tmp_path: Path) -> None:
    """The timeout bounded each read, not the download: a server trickling the bundle kept the
    download going for as long as it liked, in a thread that went on after the command's answer.
    Now the whole download ends at `download_timeout_s`, and its part file with it."""
    keys = _keys(tmp_path, ("rel-2026", Ed25519PrivateKey.generate()))

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(64 * 65536))
            self.end_headers()
            for _ in range(64):  # 64 KiB every 0.1 s: each read is quick, the whole takes 6.4 s
                self.wfile.write(b"\0" * 65536)
                time.sleep(0.1)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    files = UpdateFiles(tmp_path / "state")
    section = UpdateSection(release_keys=keys, allow_http=True, download_timeout_s=0.5)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/agent.tar"
        with pytest.raises(
            CommandFailedError, match=r"not done within \[update\] download_timeout_s \(0.5 s"
        ):
            _update_by_url(UpdateReceiver(section, files), url, "0" * 64)
    finally:
        server.shutdown()
        server.server_close()
    assert not list(files.spool.glob("*.part"))


# ---------------------------------------------------------------- what a download or a transfer may cost


@contextlib.contextmanager
def _trickle(what: str, good: bytes = b"") -> Iterator[tuple[str, threading.Event]]:
    """A web server on 127.0.0.1 that sends its answer to /slow one byte every 0.2 s (in the body, or
    in the headers) for at most 12 s, and `good` at once to /good; yields its base URL and an event
    set when the client closed the slow connection (the server's next byte fails)."""
    closed = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/good":
                self.send_response(200)
                self.send_header("Content-Length", str(len(good)))
                self.end_headers()
                self.wfile.write(good)
                return
            try:
                if what == "body":
                    self.send_response(200)
                    self.send_header("Content-Length", str(2**20))
                    self.end_headers()
                else:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                self.wfile.flush()
                for _ in range(60):
                    time.sleep(0.2)
                    self.wfile.write(b"a")
                    self.wfile.flush()
            except OSError:  # broken pipe, reset: the gateway closed the connection
                closed.set()

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", closed
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_trickled_download_ends_at_its_deadline_and_lets_go_of_thread_and_connection(
    tmp_path: Path, where: str
) -> None:
    """`read(1 MiB)` waited for a whole MiB and the socket timeout bounds each receive: a server
    sending a byte every 0.2 s (or 0.5 s) kept the download's thread, a thread of asyncio's shared
    executor, for as long as it liked after the command was answered `timed out`; a few such
    commands and the uplink's reconnect stalled. The deadline now holds inside the transfer (and
    the headers): the command ends at download_timeout_s, the connection is closed, and the next
    download starts at once."""
    trusted = Ed25519PrivateKey.generate()
    keys = _keys(tmp_path, ("rel-2026", trusted))
    bundle = _bundle(tmp_path, trusted)
    sha = sha256_file(bundle)
    files = UpdateFiles(tmp_path / "state")
    receiver = UpdateReceiver(UpdateSection(release_keys=keys, allow_http=True, download_timeout_s=1), files)
    with _trickle(where, bundle.read_bytes()) as (base, closed):
        began = time.monotonic()
        with pytest.raises(CommandFailedError, match=r"not done within \[update\] download_timeout_s \(1 s"):
            _update_by_url(receiver, f"{base}/slow", "0" * 64)
        took = time.monotonic() - began
        assert took < 4, f"the download went on for {took:.1f} s after its 1 s deadline"
        assert closed.wait(3), "the gateway kept the trickling connection open"
        assert not list(files.spool.glob("*.part"))
        assert _update_by_url(receiver, f"{base}/good", sha).detail["staged"] == sha


def test_a_hung_name_lookup_ends_at_the_deadline_and_the_next_download_goes_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead DNS server (an LTE link's) makes `getaddrinfo` hang for as long as libc retries, and
    no socket timeout bounds it: the download's thread stayed inside the lookup after the command
    was answered, and every later `update` was refused as "already downloading". The lookup now
    runs aside under the download's deadline. The resolver is the one part replaced here: a DNS
    server that never answers cannot be set for one test without changing the machine's."""
    trusted = Ed25519PrivateKey.generate()
    keys = _keys(tmp_path, ("rel-2026", trusted))
    bundle = _bundle(tmp_path, trusted)
    sha = sha256_file(bundle)
    answers = threading.Event()
    real_lookup = socket.getaddrinfo

    def lookup(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "updates.dns-hangs.test":
            answers.wait(20)  # bounded, so that a regression fails instead of hanging the suite
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    section = UpdateSection(release_keys=keys, allow_http=True, download_timeout_s=1)
    receiver = UpdateReceiver(section, UpdateFiles(tmp_path / "state"))
    try:
        with _web(bundle.read_bytes()) as (base, _asked):
            port = base.rsplit(":", 1)[1].split("/")[0]
            began = time.monotonic()
            with pytest.raises(
                CommandFailedError, match=r"name resolution of updates\.dns-hangs\.test timed out"
            ):
                _update_by_url(receiver, f"http://updates.dns-hangs.test:{port}/agent.tar", sha)
            took = time.monotonic() - began
            assert took < 3, f"the hung lookup held the download for {took:.1f} s after its 1 s deadline"
            assert _update_by_url(receiver, f"{base}/agent.tar", sha).detail["staged"] == sha
    finally:
        answers.set()


def test_a_download_keeps_off_the_shared_executor_and_a_second_one_waits_its_turn(tmp_path: Path) -> None:
    """Each download held one of the default executor's threads (`asyncio.to_thread`), which the
    broker reconnect, config updates and M-Bus reads share. A download now has a thread of its own,
    and an `update` by URL while another downloads is answered at once."""
    keys = _keys(tmp_path, ("rel-2026", Ed25519PrivateKey.generate()))
    section = UpdateSection(release_keys=keys, allow_http=True, download_timeout_s=2)
    receiver = UpdateReceiver(section, UpdateFiles(tmp_path / "state"))
    operator = Ed25519PrivateKey.generate()

    def update(url: str, sha: str) -> envelope.Envelope:
        return envelope.parse(envelope.sign(operator, "ops", "update", "s/g", {"url": url, "sha256": sha}))

    async def scenario(base: str) -> None:
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        first = asyncio.create_task(receiver.update(update(f"{base}/slow", "0" * 64)))
        await asyncio.sleep(0.5)
        # The shared executor's only thread is free for everyone else while the download trickles.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 1.5) == "free"
        with pytest.raises(CommandFailedError, match=r"an update is already downloading \(0000000000000000"):
            await receiver.update(update(f"{base}/good", "1" * 64))
        with pytest.raises(CommandFailedError, match="not done within"):
            await first

    with _trickle("body") as (base, closed):
        asyncio.run(scenario(base))
        assert closed.wait(3)


def _send_chunk(
    receiver: UpdateReceiver, transfer: str, index: int, count: int, data: bytes
) -> CommandResult:
    args = {"transfer": transfer, "index": index, "count": count, "data": base64.b64encode(data).decode()}
    signed = envelope.sign(Ed25519PrivateKey.generate(), "ops", "update_chunk", "s/g", args)
    return asyncio.run(receiver.chunk(envelope.parse(signed)))


def _on_disk(files: UpdateFiles) -> int:
    """What the chunks folder's parts take on disk (at least a block each)."""
    return sum(max(4096, p.stat().st_blocks * 512) for p in files.chunks.rglob("*.part"))


def test_tiny_chunks_are_counted_as_the_disk_holds_them_and_refused(tmp_path: Path) -> None:
    """Only each part's bytes counted: 0- and 1-byte parts, each a file (an inode, a 4 KiB block),
    cost almost nothing against max_bundle_bytes, up to 100,000 of them per transfer. Parts are now
    counted in whole blocks, every part but the last carries at least 8 KiB, and a count that
    cannot fit is refused up front."""
    limit = 2**20
    files = UpdateFiles(tmp_path / "state")
    receiver = UpdateReceiver(UpdateSection(release_keys=tmp_path / "keys", max_bundle_bytes=limit), files)
    transfer = "c" * 64

    with pytest.raises(
        CommandRefusedError, match=r"chunk 0 of 100 has 1 bytes: every chunk but the last"
    ) as small:
        _send_chunk(receiver, transfer, 0, 100, b"x")
    assert small.value.code == "chunk_too_small"
    with pytest.raises(CommandRefusedError, match=r"1000 chunks of at least 8192 bytes are over") as many:
        _send_chunk(receiver, transfer, 0, 1000, bytes(8192))
    assert many.value.code == "too_large"

    # A byte over 8 KiB takes 12 KiB of disk: counted so, 1 MiB holds 85 of them, not 127.
    answers: list[str] = []
    for index in range(127):
        try:
            _send_chunk(receiver, transfer, index, 127, bytes(8193))
        except CommandRefusedError as exc:
            answers.append(f"{exc.code}: {exc.reason[:39]}")
            break
        answers.append("ok")
    assert answers == ["ok"] * 85 + ["too_large: transfer over [update] max_bundle_bytes"]
    assert _on_disk(files) <= limit

    # The last chunk may be small; a small "last" chunk of ever new counts starts the transfer again.
    for index in range(50):
        assert _send_chunk(receiver, transfer, index, index + 1, b"x").detail["received"] == 1
    assert [p.name for p in (files.chunks / transfer).glob("*.part")] == ["000049.part"]


def test_a_third_transfer_drops_the_one_least_recently_added_to(tmp_path: Path) -> None:
    """Any number of transfers could be held at once, each a folder of parts (and, before, a glob and
    a stat of every part for each chunk). At most two are held now: a chunk of a third drops the
    transfer least recently added to, as a transfer that needs the room always did."""
    files = UpdateFiles(tmp_path / "state")
    receiver = UpdateReceiver(UpdateSection(release_keys=tmp_path / "keys"), files)
    a, b, c, d = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    part = bytes(16 * 1024)
    _send_chunk(receiver, a, 0, 2, part)
    _send_chunk(receiver, b, 0, 2, part)
    with capture_logs() as logs:
        assert _send_chunk(receiver, c, 0, 2, part).status == "ok"
    assert sorted(p.name for p in files.chunks.iterdir()) == [b, c]
    assert [(e["event"], e["transfer"]) for e in logs if e["event"] == "update.transfer_dropped"] == [
        ("update.transfer_dropped", a[:16])
    ]
    _send_chunk(receiver, b, 1, 2, b"the end")  # b is now the one most recently added to
    _send_chunk(receiver, d, 0, 2, part)
    assert sorted(p.name for p in files.chunks.iterdir()) == [b, d]
    # An agent started again counts what the last one left on disk the same way.
    again = UpdateReceiver(UpdateSection(release_keys=tmp_path / "keys"), files)
    assert _send_chunk(again, c, 0, 2, part).status == "ok"
    assert sorted(p.name for p in files.chunks.iterdir()) == [c, d]


def test_a_bundle_in_realistic_chunks_still_assembles_and_is_staged(tmp_path: Path) -> None:
    """What the limits must leave alone: a bundle of a few hundred KiB in 64 KiB chunks, out of order
    and one sent twice, assembles, hashes to its transfer and is handed to the updater; its parts
    are gone and no longer counted."""
    trusted = Ed25519PrivateKey.generate()
    keys = _keys(tmp_path, ("rel-2026", trusted))
    (tmp_path / "w").mkdir()
    wheel = tmp_path / "w" / "water_edge_agent-0.2.0-py3-none-any.whl"
    wheel.write_bytes(os.urandom(300 * 1024))
    bundle = tmp_path / "agent.tar"
    build_bundle(
        [wheel], [], trusted, "rel-2026", bundle, python="3.11", config_schema=(1, 1), outbox_schema=1
    )
    data, sha = bundle.read_bytes(), sha256_file(bundle)
    size = 64 * 1024
    count = -(-len(data) // size)
    files = UpdateFiles(tmp_path / "state")
    receiver = UpdateReceiver(UpdateSection(release_keys=keys, max_bundle_bytes=2**20), files)
    for index in [*reversed(range(count)), 0]:
        result = _send_chunk(receiver, sha, index, count, data[index * size : (index + 1) * size])
    assert result.detail == {"transfer": sha, "received": count, "of": count}
    signed = envelope.sign(Ed25519PrivateKey.generate(), "ops", "update", "s/g", {"transfer": sha})
    assert asyncio.run(receiver.update(envelope.parse(signed))).detail["staged"] == sha
    assert read_json(files.request)["sha256"] == sha  # type: ignore[index]
    assert not (files.chunks / sha).exists()
    # Its room is free again: a transfer of nearly max_bundle_bytes fits beside nothing.
    other = "e" * 64
    for index in range(15):
        assert _send_chunk(receiver, other, index, 16, bytes(size)).status == "ok"
