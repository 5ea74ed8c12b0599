"""The centre keeps gateways' learnt-state backups (centre/edgecentre/state_backups.py, schema 7).

A dead SD card is the common case of a lost gateway: its agent sent its learnt state to the centre
as an `edge-agent state export` archive cut into parts on `{base}/state_backup`. Real parts (the
agent's own encoder, of a real export of a state directory holding a SQLite history) go through a
real Mosquitto to real `edge-centre ingest` processes and PostgreSQL; a technician's
`edge-centre state-backup` must give back the archive byte for byte, and nothing a broken or hostile
gateway sends may be kept as a backup or stop the ingest.
"""

from __future__ import annotations

import hashlib
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.broker import Mosquitto, Publisher
from tests.support.centre import IngestProcess, committed_seqs, ingest_process, query
from tests.support.testing import wait_until
from water_edge.agent.backup_parts import encode_parts
from water_edge.agent.state_transfer import export_state
from water_edge.centre.loadgen import payload
from water_edge.centre.state_backups import MAX_PARTS, BackupError, read_part
from water_edge.centre.store import BackupLimits, BackupOutcome, Store, connect

pytestmark = pytest.mark.slow

SITE, GATEWAY = "north-plant", "gw-ps07"
TOPIC = f"water/{SITE}/{GATEWAY}/state_backup"
DATA_TOPIC = f"water/{SITE}/{GATEWAY}/plc1"
T0 = 1_796_000_000 * 10**9  # created_ns of the first backup in a test; each later one a minute on
LIMITS = BackupLimits(keep=7, max_bytes=64 * 1024 * 1024, max_unpacked=1024 * 1024 * 1024)


def learnt_state(root: Path, seed: int, *, noise: int = 0) -> Path:
    """A state directory as an agent leaves it: a baseline, a pump's SQLite history, learnt tags,
    and `noise` incompressible bytes of a pushed model (to make an archive of a given size)."""
    rng = random.Random(seed)
    state = root / f"state-{seed}"
    (state / "leak").mkdir(parents=True)
    (state / "leak" / "baseline.json").write_text(
        orjson.dumps({"h1": [rng.random() for _ in range(200)]}).decode()
    )
    (state / "pump" / "pump1").mkdir(parents=True)
    with sqlite3.connect(state / "pump" / "pump1" / "history.sqlite") as db:
        db.execute("CREATE TABLE history (ts INTEGER, flow REAL, note TEXT)")
        db.executemany(
            "INSERT INTO history VALUES (?, ?, ?)",
            [(i, rng.gauss(40, 3), f"run {rng.randrange(10**6)}") for i in range(2000)],
        )
    db.close()
    (state / "learnt_tags.json").write_text('{"pump1.flow": "m3/h"}')
    if noise:
        (state / "models").mkdir()
        (state / "models" / "pushed.bin").write_bytes(rng.randbytes(noise))
    (state / "outbox.sqlite").write_bytes(b"never carried")
    return state


def export(root: Path, seed: int, *, gateway: str = GATEWAY, noise: int = 0) -> bytes:
    return export_state(learnt_state(root, seed, noise=noise), SITE, gateway).archive


def parts_of(
    archive: bytes, created_ns: int, *, gateway: str = GATEWAY, part_bytes: int = 4096
) -> list[bytes]:
    return encode_parts(
        archive,
        site=SITE,
        gateway=gateway,
        created_ns=created_ns,
        agent_version="0.1.0",
        part_bytes=part_bytes,
    )


def backup_id(part: bytes) -> str:
    header = orjson.loads(part.split(b"\n", 1)[0])
    ident: str = header["backup"]
    return ident


def edge_centre(dsn: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "water_edge.centre.cli", "--dsn", dsn, *args],
        capture_output=True,
        timeout=60,
        check=False,
    )


def stored(dsn: str) -> list[tuple[Any, ...]]:
    """(backup, size, files) of every complete backup of the gateway, oldest first."""
    return query(
        dsn,
        "SELECT backup, size, files FROM state_backups WHERE site = %s AND gateway = %s ORDER BY received_at",
        SITE,
        GATEWAY,
    )


def counter(log: str, name: str) -> int:
    """A counter of the ingest's last `ingest.stopped` line."""
    found = re.findall(rf"ingest\.stopped.*?\b{name}=(\d+)", log)
    assert found, log[-3000:]
    return int(found[-1])


def running_ingest(tmp_path: Path, dsn: str, broker: Mosquitto, name: str, *extra: str) -> IngestProcess:
    ingest = ingest_process(tmp_path, name, dsn, [f"mqtt://{broker.host}:{broker.port}"], *extra)
    ingest.start()
    ingest.wait_subscribed()
    return ingest


def test_a_backup_in_parts_out_of_order_and_twice_is_stored_once_and_fetched_byte_for_byte(
    centre_db: str, tmp_path: Path
) -> None:
    archive = export(tmp_path, 1, noise=20_000)
    parts = parts_of(archive, T0)
    assert len(parts) >= 6
    rng = random.Random(3)
    sent = [*parts, parts[1], parts[-1], parts[len(parts) // 2]]  # QoS 1 delivers some twice
    rng.shuffle(sent)
    with Mosquitto() as broker:
        ingest = running_ingest(tmp_path, centre_db, broker, "c1")
        try:
            with Publisher(broker.host, broker.port) as pub:
                for seq, part in enumerate(sent, start=1):
                    pub.publish(TOPIC, part)
                    # The gateway's data goes on meanwhile, on the same connection and consumer.
                    pub.publish(DATA_TOPIC, payload(SITE, GATEWAY, seq, 10**18 + seq, 5))
                # A gateway that sends data and has never sent a backup.
                pub.publish(f"water/{SITE}/gw-silent/plc1", payload(SITE, "gw-silent", 1, 10**18, 5))
            wait_until(
                lambda: (
                    len(stored(centre_db)) == 1
                    and len(committed_seqs(centre_db).get((SITE, GATEWAY, "plc1"), [])) == len(sent)
                    and (SITE, "gw-silent", "plc1") in committed_seqs(centre_db)
                ),
                30,
                what=lambda: f"{stored(centre_db)}\n{ingest.log()[-3000:]}",
            )
        finally:
            ingest.stop()
        log = ingest.log()
    assert committed_seqs(centre_db) == {
        (SITE, GATEWAY, "plc1"): list(range(1, len(sent) + 1)),
        (SITE, "gw-silent", "plc1"): [1],
    }
    # What a central team alerts on: each gateway's newest backup and its age, none for gw-silent.
    ages = query(
        centre_db,
        "SELECT gateway, backup, age < interval '1 minute' FROM gateway_state_backup_age ORDER BY gateway",
    )
    assert ages == [("gw-ps07", backup_id(parts[0]), True), ("gw-silent", None, None)]
    assert stored(centre_db) == [(backup_id(parts[0]), len(archive), 4)]  # baseline, history, tags, model
    assert query(centre_db, "SELECT count(*) FROM state_backup_parts") == [(0,)], "its parts are dropped"
    assert query(centre_db, "SELECT count(*) FROM rejected") == [(0,)]
    assert (counter(log, "state_backup_parts"), counter(log, "state_backup_duplicates")) == (len(parts), 3)
    assert counter(log, "state_backups_stored") == 1
    assert counter(log, "rejected") == 0, "a part is not a bad data payload"
    line = re.search(r"ingest\.state_backup_stored.*", log)
    assert line is not None, log[-3000:]
    for field in (f"backup={backup_id(parts[0])}", f"bytes={len(archive)}", "files=4", f"gateway={GATEWAY}"):
        assert field in line[0], line[0]

    # The technician's copy: the very archive, private, never over a file already there.
    out = tmp_path / "fetched" / "gw-ps07-state.tar.gz"
    out.parent.mkdir()
    got = edge_centre(centre_db, "state-backup", "--site", SITE, "--gateway", GATEWAY, "--out", str(out))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == archive
    assert out.stat().st_mode & 0o777 == 0o600
    assert b"edge-agent state import" in got.stderr
    out.write_bytes(b"someone's other file")
    again = edge_centre(centre_db, "state-backup", "--site", SITE, "--gateway", GATEWAY, "--out", str(out))
    assert again.returncode == 1
    assert b"exists (--force to replace it)" in again.stderr
    assert out.read_bytes() == b"someone's other file"
    out.chmod(0o644)
    forced = edge_centre(
        centre_db, "state-backup", "--site", SITE, "--gateway", GATEWAY, "--out", str(out), "--force"
    )
    assert forced.returncode == 0, forced.stderr
    assert out.read_bytes() == archive
    assert out.stat().st_mode & 0o777 == 0o600
    piped = edge_centre(centre_db, "state-backup", "--site", SITE, "--gateway", GATEWAY, "--out", "-")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == archive

    listed = edge_centre(centre_db, "state-backups", "--gateway", GATEWAY)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split() == [
        "SITE/GATEWAY",
        "BACKUP",
        "TAKEN",
        "AT",
        "BYTES",
        "FILES",
        "AGENT",
        "RECEIVED",
        "AT",
    ]
    taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(T0 / 1e9))
    fields = re.split(r"\s{2,}", lines[1])
    assert fields[:6] == [f"{SITE}/{GATEWAY}", backup_id(parts[0]), taken, f"{len(archive):,}", "4", "0.1.0"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", fields[6]), fields


def test_no_backup_of_a_gateway_is_said_plainly(centre_db: str, tmp_path: Path) -> None:
    out = tmp_path / "state.tar.gz"
    got = edge_centre(centre_db, "state-backup", "--site", SITE, "--gateway", GATEWAY, "--out", str(out))
    assert got.returncode == 1
    assert got.stderr.decode().strip() == (
        "edge-centre state-backup: no state backup of north-plant/gw-ps07: has the gateway sent one?"
        " edge-agent status on it shows `state backup`"
    )
    assert not out.exists()
    listed = edge_centre(centre_db, "state-backups", "--site", SITE)
    assert listed.returncode == 0
    assert listed.stdout.decode().startswith("no state backups of north-plant")


def test_broken_or_hostile_parts_and_archives_are_rejected_with_their_reason_and_none_is_kept(
    centre_db: str, tmp_path: Path
) -> None:
    good = export(tmp_path / "good", 2)
    damaged = parts_of(good, T0)
    head, data = damaged[1].split(b"\n", 1)
    damaged[1] = head + b"\n" + bytes([data[0] ^ 0xFF]) + data[1:]  # a bit flipped on the way
    wrong_sha = []
    for part in parts_of(good, T0 + 60 * 10**9):  # every header names another archive's SHA-256
        head, data = part.split(b"\n", 1)
        header = orjson.loads(head)
        header["sha256"] = hashlib.sha256(b"another archive").hexdigest()
        wrong_sha.append(orjson.dumps(header) + b"\n" + data)
    impostor = parts_of(good, T0 + 120 * 10**9, gateway="gw-ps08")  # on gw-ps07's topic
    foreign = parts_of(export(tmp_path / "foreign", 3, gateway="gw-ps08"), T0 + 180 * 10**9)
    huge = parts_of(export(tmp_path / "huge", 4, noise=200_000), T0 + 240 * 10**9, part_bytes=32 * 1024)
    later = export(tmp_path / "later", 5)
    fine = parts_of(later, T0 + 300 * 10**9)
    hostile = [*damaged, *wrong_sha, *impostor, *foreign, *huge, b"no header line at all"]

    with Mosquitto() as broker:
        ingest = running_ingest(tmp_path, centre_db, broker, "c1", "--max-state-backup-bytes", "150000")
        try:
            with Publisher(broker.host, broker.port) as pub:
                pub.publish(DATA_TOPIC, payload(SITE, GATEWAY, 1, 10**18, 5))
                for part in hostile:
                    pub.publish(TOPIC, part)
                pub.publish(DATA_TOPIC, payload(SITE, GATEWAY, 2, 10**18 + 1, 5))
                for part in fine:  # the ingest goes on: the gateway's next backup is kept
                    pub.publish(TOPIC, part)
            wait_until(
                lambda: (
                    len(stored(centre_db)) == 1
                    and committed_seqs(centre_db) == {(SITE, GATEWAY, "plc1"): [1, 2]}
                ),
                30,
                what=lambda: f"{stored(centre_db)}\n{ingest.log()[-3000:]}",
            )
            assert ingest.process is not None
            assert ingest.process.poll() is None
        finally:
            ingest.stop()
        log = ingest.log()
    assert stored(centre_db) == [(backup_id(fine[0]), len(later), 3)], "none of the hostile ones"
    rows = query(centre_db, "SELECT topic, reason, payload FROM rejected ORDER BY id")
    reasons: dict[str, int] = {}
    for topic, reason, body in rows:
        assert topic == TOPIC
        assert len(body) <= 4096, "a bounded prefix of a part, not the part"
        assert any(part.startswith(bytes(body)) for part in hostile), reason
        reasons[reason] = reasons.get(reason, 0) + 1
    ids = [backup_id(p[0]) for p in (damaged, wrong_sha, impostor, foreign, huge)]
    huge_size = orjson.loads(huge[0].split(b"\n", 1)[0])["size"]
    assert reasons == {
        f"backup {ids[0]} part 1: its bytes do not match its part_sha256: damaged": 1,
        f"backup {ids[1]}: the parts put together do not match its sha256: damaged": 1,
        "header names 'north-plant'/'gw-ps08', the topic 'north-plant'/'gw-ps07': a gateway sends only"
        " its own backups": len(impostor),
        f"backup {ids[3]}: manifest.json names 'north-plant'/'gw-ps08', the topic 'north-plant'/'gw-ps07':"
        " the learnt state of another gateway": 1,
        f"backup {ids[4]}: {huge_size} bytes, more than the 150000 kept (--max-state-backup-bytes)": len(
            huge
        ),
        "no header line (a JSON object and a newline) in the first 4096 bytes": 1,
    }
    # The damaged backup waits for a part that will not come (dropped after 48 h); no other is held.
    held = query(centre_db, "SELECT backup, parts_held, parts FROM state_backups_incomplete")
    assert held == [(ids[0], len(damaged) - 1, len(damaged))]
    assert counter(log, "state_backup_rejected") == sum(reasons.values())
    assert counter(log, "rejected") == 0
    assert "ingest.state_backup_rejected" in log
    assert "Traceback" not in log


def _stored_lines(ingest: IngestProcess) -> int:
    return ingest.log().count("ingest.state_backup_stored")


def test_the_newest_backups_are_kept_and_an_older_one_can_be_named(centre_db: str, tmp_path: Path) -> None:
    archives = [export(tmp_path, seed) for seed in range(10, 14)]
    sent = [parts_of(a, T0 + i * 3600 * 10**9) for i, a in enumerate(archives)]
    ids = [backup_id(p[0]) for p in sent]
    with Mosquitto() as broker:
        ingest = running_ingest(tmp_path, centre_db, broker, "c1", "--keep-state-backups", "2")
        try:
            with Publisher(broker.host, broker.port) as pub:
                for n, parts in enumerate(sent, start=1):
                    for part in reversed(parts):
                        pub.publish(TOPIC, part)
                    wait_until(lambda: _stored_lines(ingest) == n, 30, what=lambda: ingest.log()[-3000:])  # noqa: B023
        finally:
            ingest.stop()
    assert [row[0] for row in stored(centre_db)] == ids[2:]
    listed = edge_centre(centre_db, "state-backups", "--site", SITE, "--gateway", GATEWAY)
    assert [line.split()[1] for line in listed.stdout.decode().splitlines()[1:]] == [ids[3], ids[2]]
    newest = edge_centre(centre_db, "state-backup", "--site", SITE, "--gateway", GATEWAY, "--out", "-")
    assert newest.stdout == archives[3]
    named = edge_centre(
        centre_db, "state-backup", "--site", SITE, "--gateway", GATEWAY, "--backup", ids[2], "--out", "-"
    )
    assert named.stdout == archives[2]
    gone = edge_centre(
        centre_db, "state-backup", "--site", SITE, "--gateway", GATEWAY, "--backup", ids[0], "--out", "-"
    )
    assert gone.returncode == 1
    assert gone.stdout == b""
    assert gone.stderr.decode().strip() == (
        f"edge-centre state-backup: no state backup {ids[0]} of north-plant/gw-ps07"
        " (edge-centre state-backups --site north-plant --gateway gw-ps07 lists those kept)"
    )


@pytest.mark.parametrize(
    "extra",
    [[["--group", "g1"], ["--group", "g1"]], [["--partition", "0/2"], ["--partition", "1/2"]]],
    ids=["shared", "partitions"],
)
def test_two_consumers_store_a_backup_whose_parts_they_share_once(
    centre_db: str, tmp_path: Path, extra: list[list[str]]
) -> None:
    """With a shared subscription the broker hands the parts of one backup to both consumers; with
    static partitions each sees every part and the one whose partition holds the gateway takes them."""
    archive = export(tmp_path, 6, noise=100_000)
    parts = parts_of(archive, T0)
    assert len(parts) >= 20
    with Mosquitto() as broker:
        consumers = [running_ingest(tmp_path, centre_db, broker, f"c{i}", *extra[i]) for i in range(2)]
        try:
            with Publisher(broker.host, broker.port) as pub:
                for part in parts + parts[::-1]:  # each twice, the second round backwards
                    pub.publish(TOPIC, part)
            wait_until(lambda: len(stored(centre_db)) == 1, 30, what=lambda: consumers[0].log()[-3000:])
        finally:
            for c in consumers:
                c.stop()
        logs = [c.log() for c in consumers]
    assert stored(centre_db) == [(backup_id(parts[0]), len(archive), 4)]
    got = edge_centre(centre_db, "state-backup", "--site", SITE, "--gateway", GATEWAY, "--out", "-")
    assert got.stdout == archive
    assert query(centre_db, "SELECT count(*) FROM rejected") == [(0,)]
    held = [counter(log, "state_backup_parts") for log in logs]
    assert sum(held) == len(parts), held
    assert sum(counter(log, "state_backups_stored") for log in logs) == 1
    if extra[0][0] == "--group":
        assert all(n > 0 for n in held), f"the broker shared the parts: {held}"
    else:
        assert sorted(n > 0 for n in held) == [False, True], f"one partition holds the gateway: {held}"


def test_parts_added_from_two_connections_at_once_make_one_backup(centre_db: str, tmp_path: Path) -> None:
    archive = export(tmp_path, 7, noise=60_000)
    parts = [read_part(TOPIC, p) for p in parts_of(archive, T0)]
    outcomes: list[BackupOutcome] = []
    lock = threading.Lock()

    def add(order: list[int]) -> None:
        store = Store(centre_db)
        try:
            for i in order:
                outcome = store.add_backup_part(parts[i], TOPIC, b"", LIMITS)
                with lock:
                    outcomes.append(outcome)
        finally:
            store.close()

    orders = [list(range(len(parts))), list(reversed(range(len(parts))))]
    threads = [threading.Thread(target=add, args=(order,)) for order in orders * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kinds = [o.kind for o in outcomes]
    assert kinds.count("stored") == 1, kinds
    assert kinds.count("part") == len(parts) - 1, kinds
    assert kinds.count("rejected") == 0
    (row,) = query(centre_db, "SELECT archive FROM state_backups")
    assert bytes(row[0]) == archive
    assert query(centre_db, "SELECT count(*) FROM state_backup_parts") == [(0,)]


def test_incomplete_backups_are_dropped_when_old_or_past_the_size_or_count_limit(
    centre_db: str, tmp_path: Path
) -> None:
    old, recent, big = (
        [read_part(TOPIC, p) for p in parts_of(export(tmp_path / str(seed), seed, noise=noise), T0 + seed)]
        for seed, noise in ((20, 0), (21, 0), (22, 40_000))
    )
    store = Store(centre_db)
    try:
        assert store.add_backup_part(old[0], TOPIC, b"", LIMITS).kind == "part"
        with connect(centre_db) as conn:  # its first part came 49 h ago
            conn.execute("UPDATE state_backup_parts SET received_at = now() - interval '49 hours'")
        assert store.add_backup_part(recent[0], TOPIC, b"", LIMITS).kind == "part"
        assert store.sweep_backup_parts() == [(SITE, GATEWAY, old[0].backup, 1)]
        assert query(centre_db, "SELECT backup FROM state_backup_parts") == [(recent[0].backup,)]
        # A gateway's incomplete parts are held up to the size limit: a new backup's push the old out.
        small = BackupLimits(keep=7, max_bytes=big[0].size + 100, max_unpacked=LIMITS.max_unpacked)
        outcomes = [store.add_backup_part(p, TOPIC, b"", small) for p in big[:-1]]
        dropped = [d for o in outcomes for d in o.dropped]
        assert dropped == [
            (recent[0].backup, f"incomplete, and the gateway's parts held passed {small.max_bytes} bytes")
        ]
        assert query(centre_db, "SELECT DISTINCT backup FROM state_backup_parts") == [(big[0].backup,)]
        # And up to INCOMPLETE_BACKUPS_HELD (4) incomplete backups, however small: the first part of
        # five more backups pushes the two oldest out.
        archive = export(tmp_path / "many", 23)
        firsts = [read_part(TOPIC, parts_of(archive, T0 + i * 10**9)[0]) for i in range(5)]
        outcomes = []
        for first in firsts:
            outcomes.append(store.add_backup_part(first, TOPIC, b"", LIMITS))
            time.sleep(0.01)  # one after the other, as a gateway sends them
    finally:
        store.close()
    assert [d for o in outcomes for d in o.dropped] == [
        (backup, "incomplete, and the gateway held more than 4 incomplete ones")
        for backup in (big[0].backup, firsts[0].backup)
    ]
    held = query(centre_db, "SELECT backup FROM state_backups_incomplete ORDER BY first_part_at")
    assert held == [(first.backup,) for first in firsts[1:]]


def _header(**changes: Any) -> bytes:
    data = b"x" * 5000
    header = {
        "format": "edge-agent-state-backup/1", "backup": "20261207T210000Z-3f9a0c1b2d4e", "part": 0,
        "parts": 2, "size": 9000, "sha256": "0" * 64, "part_sha256": hashlib.sha256(data).hexdigest(),
        "site": SITE, "gateway": GATEWAY, "created_ns": T0, "agent_version": "0.1.0",
    }  # fmt: skip
    header.update(changes)
    return orjson.dumps(header) + b"\n" + data


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"format": "edge-agent-state-backup/2"}, "header: format must be 'edge-agent-state-backup/1'"),
        ({"parts": MAX_PARTS + 1}, f"header: parts must be an integer from 1 to {MAX_PARTS}"),
        ({"part": 2}, "header: part must be an integer from 0 to 1 (got 2)"),
        ({"part": True}, "header: part must be an integer from 0 to 1 (got True)"),
        ({"backup": "../../etc/passwd"}, "header: backup must be 1 to 64 of A-Z a-z 0-9 _ . : -"),
        ({"backup": "b" * 65}, "header: backup must be 1 to 64 of"),
        ({"size": 20_000}, "part 0 of 2: 5000 bytes, which cannot be a part of an archive of 20000 in 2"),
        ({"part": 1}, "part 1 of 2 (the last): 5000 bytes, which cannot end an archive of 9000 in 2"),
        ({"part_sha256": "f" * 64}, "part 0: its bytes do not match its part_sha256: damaged"),
        ({"created_ns": -1}, "header: created_ns must be an integer from 0 to"),
        ({"agent_version": "0.1\u0000"}, "header: agent_version must be 1 to 64 printable ASCII characters"),
        ({"site": "south"}, "header names 'south'/'gw-ps07', the topic 'north-plant'/'gw-ps07'"),
    ],
)
def test_a_part_is_read_only_when_every_header_field_holds(changes: dict[str, Any], reason: str) -> None:
    assert read_part(TOPIC, _header()).part == 0  # the stimulus, unchanged, is a good part
    with pytest.raises(BackupError) as caught:
        read_part(TOPIC, _header(**changes))
    assert reason in str(caught.value)


def test_an_archive_that_unpacks_without_bound_is_refused_without_unpacking_it() -> None:
    """A few KiB of gzip can claim a member of gigabytes; the reader stops at its limit."""
    import gzip
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("state/models/zeros.bin")
        info.size = 64 * 1024 * 1024
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    bomb = gzip.compress(buffer.getvalue())
    assert len(bomb) < 1024 * 1024
    from water_edge.centre.state_backups import check_archive

    started = time.monotonic()
    with pytest.raises(BackupError, match="its files hold more than 10485760 bytes: refused"):
        check_archive(bomb, SITE, GATEWAY, max_unpacked=10 * 1024 * 1024)
    assert time.monotonic() - started < 2.0
    # A pax header is read into memory whole by tarfile: one claiming a gigabyte is refused first.
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, 10**9
    header_bomb = gzip.compress(pax.tobuf(format=tarfile.USTAR_FORMAT) + bytes(4 * 1024 * 1024))
    with pytest.raises(BackupError, match="a tar extension header of 1000000000 bytes: refused"):
        check_archive(header_bomb, SITE, GATEWAY)
