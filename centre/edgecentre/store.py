"""PostgreSQL: the schema's migrations and the one transaction that commits a batch of messages.

Exactly once, by construction: a batch's message keys (stream, seq) are inserted into `messages`
with `ON CONFLICT DO NOTHING ... RETURNING`, and only the messages whose key was new in *this*
transaction have their readings and events copied in, in the same transaction. A duplicate
delivery, to this consumer or to another one at the same moment (the second insert of a key waits
for the first transaction and then sees the conflict), therefore adds nothing. The broker gets
its acknowledgements only after the commit (consumer.py): a crash before it means redelivery,
which this makes harmless.

psycopg's errors are translated here: `StoreError` when the database is unavailable (the ingest
retries), `StoreRefusedError` when it refuses a value in the batch (a NUL in a text, an integer
beyond bigint, a key twice in one message, a text too long to index: the ingest rejects the message
that carries it). An integer beyond bigint in a reading is refused on this side: binary COPY packs
it here.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg.rows import TupleRow

from water_edge.centre import gaps
from water_edge.centre.burst_log import BurstLog
from water_edge.centre.payload import Message
from water_edge.centre.state_backups import BackupError, Part, check_archive

READING_COLUMNS = "stream_id, seq, tag, ts_ns, value, value_text, quality, reason, unit, source, repeat"
# The readings' types in COPY order. Readings are copied in binary: it spares the ingest turning
# every number into text, which took 0.46 s of the process's CPU per 300,000 readings against
# 0.17 s in binary (docs/benchmarks.md); the database's own work is the same.
READING_TYPES = (
    "integer", "bigint", "text", "bigint", "double precision",
    "text", "text", "text", "text", "text", "boolean",
)  # fmt: skip
EVENT_COLUMNS = "stream_id, seq, idx, kind, source, ts_ns, severity, score, detail"
_MIGRATION_LOCK = 0x5745_4345  # "WECE": one migrator at a time
# Stream ids kept in memory: a fleet's streams several times over (about 300 bytes each). Bounded
# because gateways name them: a new epoch, site or stream in every message would otherwise grow
# the process for ever. One that is no longer kept is looked up again with its next batch.
STREAM_IDS_CACHED = 200_000
# New `streams` rows (a new stream, epoch or site) one gateway may make in a day before the messages
# of another new one are refused: a gateway restarting its outbox a few times a day (a reflash, a
# quarantined outbox) makes a row per stream each time, tens a day; a broken or hostile one that
# restarts its epoch in every message made 30,000 in a walk, and every gap check walks every row.
NEW_STREAMS_PER_DAY = 1000
_NEW_STREAMS_LOCK = 0x5745_4E53  # "WENS", with the gateway's hash: one counter of a gateway at a time
# "WESB", with the hash of site/gateway: one consumer at a time stores, assembles or drops the
# state-backup parts of a gateway (parts of one backup reach several consumers of a $share group).
_STATE_BACKUP_LOCK = 0x5745_5342
# Parts of a backup not completed within this long are dropped (the gateway sends a new backup).
STATE_BACKUP_PARTS_MAX_AGE_S = 48 * 3600
# Incomplete backups held per gateway (the one a part belongs to included); the oldest go first.
INCOMPLETE_BACKUPS_HELD = 4


class StoreError(Exception):
    """The database could not take the batch (connection lost, server down); nothing was committed."""


class StoreRefusedError(Exception):
    """The database refused a value in the batch; nothing was committed. Retrying cannot help."""


@contextlib.contextmanager
def _db_errors() -> Iterator[None]:
    try:
        yield
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        raise StoreRefusedError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    except OverflowError as exc:  # binary COPY packs integers here, before the database sees them
        raise StoreRefusedError(f"integer out of range for its column ({exc})") from exc
    except psycopg.OperationalError as exc:
        # Class 54 (program limit exceeded) is the value's doing, not an outage: a text too long for
        # an index entry (a tag of a few KB) would otherwise be retried forever, holding up the rest.
        if exc.sqlstate is not None and exc.sqlstate.startswith("54"):
            raise StoreRefusedError(str(exc).splitlines()[0]) from exc
        raise StoreError(f"database unavailable: {exc}") from exc
    except psycopg.errors.SerializationFailure as exc:  # pragma: no cover - not at READ COMMITTED
        raise StoreError(f"serialisation failure: {exc}") from exc


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[TupleRow]:
    """A connection that speaks UTF-8 whatever the database's encoding. A database created under
    the C or POSIX locale (initdb's default where LANG is unset, as in many containers) is
    SQL_ASCII, where psycopg hands every text back as bytes: the migrations already applied were
    not recognised and applied again ("relation streams already exists")."""
    return psycopg.connect(dsn, autocommit=autocommit, client_encoding="utf8")


def migrations() -> list[tuple[str, str]]:
    """(name, sql) of every migration shipped with the package, in order."""
    folder = resources.files("water_edge.centre") / "migrations"
    files = sorted((f.name, f) for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(name, f.read_text()) for name, f in files]


def migrate(dsn: str) -> list[str]:
    """Apply the migrations not yet applied (each in its own transaction); the names applied."""
    applied: list[str] = []
    with _db_errors(), connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS centre_migrations"
                " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM centre_migrations")}
            for name, sql in migrations():
                if name in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)  # our own files, not user input
                    conn.execute("INSERT INTO centre_migrations (name) VALUES (%s)", (name,))
                applied.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


@dataclass(frozen=True, slots=True)
class Committed:
    messages: int  # new messages committed
    duplicates: int  # messages whose (stream, seq) was already there
    readings: int
    events: int
    rejected: int
    conflicts: int = 0  # of the duplicates, those with other content than the stored message
    refusals: int = 0  # of the rejected, those refused for their gateway's new streams (`admit`)

    def __add__(self, other: Committed) -> Committed:
        return Committed(
            self.messages + other.messages,
            self.duplicates + other.duplicates,
            self.readings + other.readings,
            self.events + other.events,
            self.rejected + other.rejected,
            self.conflicts + other.conflicts,
            self.refusals + other.refusals,
        )


@dataclass(frozen=True, slots=True)
class BackupOutcome:
    """What one state-backup part did: `part` (held, the backup not complete yet), `duplicate`
    (held already, or its backup stored already), `stored` (it completed the backup) or `rejected`
    (`reason`; kept in `rejected`). `dropped`: incomplete backups of the gateway dropped to stay
    within the size limit, each (backup, why); `retired`: complete ones past the newest `keep`."""

    kind: str
    reason: str | None = None
    files: int = 0
    size: int = 0
    dropped: tuple[tuple[str, str], ...] = ()
    retired: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BackupLimits:
    """Of a gateway's learnt-state backups: kept complete (the newest), an archive's bytes at most
    (and the bytes of its incomplete ones held), an archive's unpacked bytes at most."""

    keep: int
    max_bytes: int
    max_unpacked: int


class Store:
    """One connection to the database; `commit()` writes one batch in one transaction."""

    def __init__(self, dsn: str, *, alerts: BurstLog | None = None) -> None:
        self._dsn = dsn
        self._alerts = alerts if alerts is not None else BurstLog()
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._stream_ids: dict[tuple[str, str, str, int], int] = {}

    def _connection(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed:
            with _db_errors():
                self._conn = connect(self._dsn)
        return self._conn

    def check_gaps(self, timeout_s: float) -> list[gaps.Gap] | None:
        """One gap check on this connection (between batches); None if another consumer runs one."""
        try:
            with _db_errors():
                return gaps.check(self._connection(), timeout_s, self._alerts)
        except StoreError:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _ids(
        self, conn: psycopg.Connection[TupleRow], keys: set[tuple[str, str, str, int]]
    ) -> dict[tuple[str, str, str, int], int]:
        """The streams row id of each key, made where it is new."""
        missing = keys - self._stream_ids.keys()
        if missing:
            self._fetch_ids(conn, sorted(missing))
        ids = {k: self._stream_ids[k] for k in keys}
        excess = len(self._stream_ids) - STREAM_IDS_CACHED
        if excess > 0:  # the oldest go first (a dict keeps its insertion order)
            for key in list(itertools.islice(self._stream_ids, excess)):
                del self._stream_ids[key]
        return ids

    def admit(
        self, keys: set[tuple[str, str, str, int]], per_day: int = NEW_STREAMS_PER_DAY
    ) -> dict[tuple[str, str, str, int], int]:
        """Make the `streams` rows of the keys that have none, up to `per_day` new rows per gateway
        in the last 24 hours (0: no limit); the keys refused, each with the gateway's count then.

        Only a key with no row yet can be refused: a gateway's existing streams are never held up.
        A gateway is counted by its name (the topic level the broker's ACL binds), whatever site it
        names. Counting and making rows take a lock per gateway, so consumers sharing the load
        together keep to the limit. `commit()` alone makes rows without a limit."""
        missing = keys - self._stream_ids.keys()
        if not missing or per_day <= 0:
            return {}
        try:
            with _db_errors():
                return self._admit(self._connection(), missing, per_day)
        except (StoreError, StoreRefusedError):
            self.close()
            raise

    def _admit(
        self, conn: psycopg.Connection[TupleRow], missing: set[tuple[str, str, str, int]], per_day: int
    ) -> dict[tuple[str, str, str, int], int]:
        rows = sorted(missing)
        self._select_ids(conn, rows)
        new = [k for k in rows if k not in self._stream_ids]
        refused: dict[tuple[str, str, str, int], int] = {}
        allowed: list[tuple[str, str, str, int]] = []
        gateways = sorted({k[1] for k in new})
        with conn.transaction(), conn.cursor() as cur:
            if gateways:
                cur.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(g))"
                    " FROM (SELECT g FROM unnest(%s::text[]) AS g ORDER BY g) AS ordered",
                    (_NEW_STREAMS_LOCK, gateways),
                )
                cur.execute(
                    "SELECT gateway, count(*) FROM streams WHERE gateway = ANY(%s)"
                    " AND first_seen > now() - interval '1 day' GROUP BY gateway",
                    (gateways,),
                )
                made = {str(gateway): int(count) for gateway, count in cur.fetchall()}
                for key in new:
                    if made.get(key[1], 0) < per_day:
                        allowed.append(key)
                        made[key[1]] = made.get(key[1], 0) + 1
                    else:
                        refused[key] = made[key[1]]
            if allowed:
                cur.executemany(
                    "INSERT INTO streams (site, gateway, stream, epoch) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    allowed,
                )
        if allowed:
            self._select_ids(conn, allowed)
        return refused

    def _select_ids(self, conn: psycopg.Connection[TupleRow], rows: list[tuple[str, str, str, int]]) -> None:
        """Into the cache, the ids of those of `rows` that have a streams row."""
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "SELECT site, gateway, stream, epoch, id FROM streams WHERE (site, gateway, stream, epoch) IN"
                " (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[]))",
                ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]),
            )
            for site, gateway, stream, epoch, sid in cur.fetchall():
                self._stream_ids[(str(site), str(gateway), str(stream), int(epoch))] = int(sid)

    def _fetch_ids(self, conn: psycopg.Connection[TupleRow], rows: list[tuple[str, str, str, int]]) -> None:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO streams (site, gateway, stream, epoch) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                rows,
            )
            cur.execute(
                "SELECT site, gateway, stream, epoch, id FROM streams WHERE (site, gateway, stream, epoch) IN"
                " (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[]))",
                ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]),
            )
            for site, gateway, stream, epoch, sid in cur.fetchall():
                self._stream_ids[(str(site), str(gateway), str(stream), int(epoch))] = int(sid)

    def commit(
        self,
        messages: Sequence[Message],
        rejected: Sequence[tuple[str, str, bytes]] = (),
        refusals: Sequence[tuple[str, str, str, int]] = (),
    ) -> Committed:
        """Commit a batch: new messages with their readings and events, and the rejected ones;
        `refusals`, the keys of messages refused by `admit()` (one each), counted per gateway in
        `stream_refusals` (their bodies are among `rejected`)."""
        try:
            with _db_errors():
                return self._commit(messages, rejected, refusals)
        except (StoreError, StoreRefusedError):
            self.close()  # a broken connection is not reused, nor one left in a failed COPY
            raise

    def _commit(
        self,
        messages: Sequence[Message],
        rejected: Sequence[tuple[str, str, bytes]],
        refusals: Sequence[tuple[str, str, str, int]],
    ) -> Committed:
        conn = self._connection()
        ids = self._ids(conn, {m.key for m in messages})
        by_key: dict[tuple[int, int], Message] = {}
        for m in messages:
            by_key.setdefault((ids[m.key], m.seq), m)
        keys = list(by_key)
        readings = events = conflicts = 0
        with conn.transaction(), conn.cursor() as cur:
            new: list[tuple[int, int]] = []
            if keys:
                prints = {k: by_key[k].fingerprint for k in keys}
                cur.execute(
                    "INSERT INTO messages (stream_id, seq, sent_ns, items, fingerprint)"
                    " SELECT * FROM unnest(%s::int[], %s::bigint[], %s::bigint[], %s::int[], %s::bigint[])"
                    " ON CONFLICT DO NOTHING RETURNING stream_id, seq",
                    (
                        [k[0] for k in keys],
                        [k[1] for k in keys],
                        [by_key[k].sent_ns for k in keys],
                        [by_key[k].items for k in keys],
                        [prints[k] for k in keys],
                    ),
                )
                new = [(int(sid), int(seq)) for sid, seq in cur.fetchall()]
                if len(new) < len(keys):
                    conflicts = self._conflicts(cur, set(keys) - set(new), prints, by_key)
            fresh = [(k, by_key[k]) for k in new]
            if any(m.readings for _, m in fresh):
                with cur.copy(f"COPY readings ({READING_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(READING_TYPES)
                    for (sid, seq), m in fresh:
                        for r in m.readings:
                            copy.write_row((sid, seq, *r))
                        readings += len(m.readings)
            if any(m.events for _, m in fresh):
                with cur.copy(f"COPY events ({EVENT_COLUMNS}) FROM STDIN") as copy:
                    for (sid, seq), m in fresh:
                        for e in m.events:
                            copy.write_row((sid, seq, *e))
                        events += len(m.events)
            if rejected:
                cur.executemany("INSERT INTO rejected (topic, reason, payload) VALUES (%s, %s, %s)", rejected)
            by_gateway: dict[str, list[tuple[str, str, str, int]]] = {}
            for key in refusals:
                by_gateway.setdefault(key[1], []).append(key)
            for gateway, refused in sorted(by_gateway.items()):
                site, _, stream, epoch = refused[-1]
                cur.execute(
                    "INSERT INTO stream_refusals (gateway, refused, last_site, last_stream, last_epoch)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (gateway) DO UPDATE SET"
                    " refused = stream_refusals.refused + EXCLUDED.refused, last_refused_at = now(),"
                    " last_site = EXCLUDED.last_site, last_stream = EXCLUDED.last_stream,"
                    " last_epoch = EXCLUDED.last_epoch",
                    (gateway, len(refused), site, stream, epoch),
                )
        return Committed(
            len(new),
            len(keys) - len(new) + (len(messages) - len(by_key)),
            readings,
            events,
            len(rejected),
            conflicts,
            len(refusals),
        )

    def _conflicts(
        self,
        cur: psycopg.Cursor[TupleRow],
        seen: set[tuple[int, int]],
        prints: dict[tuple[int, int], int],
        by_key: dict[tuple[int, int], Message],
    ) -> int:
        """Record the messages of `seen` (keys already held) whose content is not the stored one's:
        not a resend but another sender under the same seq. How many."""
        cur.execute(
            "SELECT m.stream_id, m.seq, m.fingerprint FROM messages m"
            " JOIN unnest(%s::int[], %s::bigint[]) AS k (sid, seq) ON m.stream_id = k.sid AND m.seq = k.seq"
            " WHERE m.fingerprint IS NOT NULL",
            ([k[0] for k in seen], [k[1] for k in seen]),
        )
        found = [
            (int(sid), int(seq), int(stored), prints[(sid, seq)], by_key[(sid, seq)].sent_ns)
            for sid, seq, stored in cur.fetchall()
            if int(stored) != prints[(sid, seq)]
        ]
        if found:
            cur.executemany(
                "INSERT INTO conflicts (stream_id, seq, stored_fingerprint, fingerprint, sent_ns)"
                " VALUES (%s, %s, %s, %s, %s)",
                found,
            )
            for sid, seq, *_ in found:
                m = by_key[(sid, seq)]
                self._alerts.warning(
                    "ingest.conflict",
                    site=m.site,
                    gateway=m.gateway,
                    stream=m.stream,
                    epoch=m.epoch,
                    seq=seq,
                    why="this seq already holds another message: two gateways publishing as one?",
                )
        return len(found)

    # ------------------------------------------------------------------ learnt-state backups

    def reject(self, rows: Sequence[tuple[str, str, bytes]]) -> None:
        """Into `rejected`, in one transaction: (topic, reason, payload) each."""
        if not rows:
            return
        try:
            with _db_errors():
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany("INSERT INTO rejected (topic, reason, payload) VALUES (%s, %s, %s)", rows)
        except (StoreError, StoreRefusedError):
            self.close()
            raise

    def add_backup_part(
        self, part: Part, topic: str, kept_payload: bytes, limits: BackupLimits
    ) -> BackupOutcome:
        """Hold one part of a gateway's state backup; the one that completes it puts the archive
        together, checks it and stores it (its parts dropped, the gateway's backups past the newest
        `limits.keep` too). A part or an archive that fails a check goes to `rejected` with
        `kept_payload` (the part's first bytes). One transaction, under a lock per gateway:
        consumers sharing the load store each backup once."""
        try:
            with _db_errors():
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(
                        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                        (_STATE_BACKUP_LOCK, f"{part.site}/{part.gateway}"),
                    )
                    held = self._hold(cur, part, topic, kept_payload)
                    if isinstance(held, BackupOutcome):
                        return held
                    if held < part.parts:
                        return BackupOutcome(
                            "part", dropped=self._drop_over_size(cur, part, limits.max_bytes)
                        )
                    return self._assemble(cur, part, topic, kept_payload, limits)
        except (StoreError, StoreRefusedError):
            self.close()
            raise

    def _hold(self, cur: psycopg.Cursor[TupleRow], p: Part, topic: str, kept: bytes) -> BackupOutcome | int:
        """Insert the part; the parts of its backup held then, or what became of it if not held."""
        ident = (p.site, p.gateway, p.backup)
        cur.execute("SELECT 1 FROM state_backups WHERE site = %s AND gateway = %s AND backup = %s", ident)
        if cur.fetchone() is not None:
            return BackupOutcome("duplicate")
        cur.execute(
            "SELECT parts, size, sha256, created_ns, count(*) OVER (), sum(octet_length(data)) OVER (),"
            " bool_or(part = %s) OVER () FROM state_backup_parts"
            " WHERE site = %s AND gateway = %s AND backup = %s LIMIT 1",
            (p.part, *ident),
        )
        row = cur.fetchone()
        held = 0
        if row is not None:
            parts, size, sha256, created_ns, held, held_bytes, again = row
            if again:
                return BackupOutcome("duplicate")
            where = f"backup {p.backup} part {p.part}"
            if (parts, size, sha256, created_ns) != (p.parts, p.size, p.sha256, p.created_ns):
                why = f"{where}: its parts, size, sha256 or created_ns differ from the parts held of it"
                return self._reject_backup(cur, topic, why, kept)
            if held_bytes + len(p.data) > p.size:
                why = f"{where}: its parts hold more than the archive's {p.size} bytes"
                return self._reject_backup(cur, topic, why, kept)
        cur.execute(
            "INSERT INTO state_backup_parts (site, gateway, backup, part, parts, size, sha256,"
            " created_ns, agent_version, data) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (*ident, p.part, p.parts, p.size, p.sha256, p.created_ns, p.agent_version, p.data),
        )
        return int(held) + 1

    def _assemble(
        self, cur: psycopg.Cursor[TupleRow], p: Part, topic: str, kept: bytes, limits: BackupLimits
    ) -> BackupOutcome:
        """Every part is in: the archive put together and checked, stored, its parts dropped."""
        ident = (p.site, p.gateway, p.backup)
        cur.execute(
            "SELECT data FROM state_backup_parts WHERE site = %s AND gateway = %s AND backup = %s"
            " ORDER BY part",
            ident,
        )
        archive = b"".join(bytes(data) for (data,) in cur.fetchall())
        cur.execute("DELETE FROM state_backup_parts WHERE site = %s AND gateway = %s AND backup = %s", ident)
        try:
            if len(archive) != p.size:
                raise BackupError(f"{len(archive)} bytes put together, the header says {p.size}")
            if hashlib.sha256(archive).hexdigest() != p.sha256:
                raise BackupError("the parts put together do not match its sha256: damaged")
            checked = check_archive(archive, p.site, p.gateway, max_unpacked=limits.max_unpacked)
        except BackupError as exc:
            return self._reject_backup(cur, topic, f"backup {p.backup}: {exc}", kept)
        cur.execute(
            "INSERT INTO state_backups (site, gateway, backup, created_ns, taken_at, size, sha256,"
            " agent_version, files, archive) VALUES"
            " (%s, %s, %s, %s, to_timestamp(%s::double precision / 1e9), %s, %s, %s, %s, %s)",
            (*ident, p.created_ns, p.created_ns, p.size, p.sha256, p.agent_version, checked.files, archive),
        )
        cur.execute(
            "DELETE FROM state_backups WHERE site = %s AND gateway = %s AND backup NOT IN"
            " (SELECT backup FROM state_backups WHERE site = %s AND gateway = %s"
            "  ORDER BY received_at DESC, created_ns DESC, backup DESC LIMIT %s) RETURNING backup",
            (p.site, p.gateway, p.site, p.gateway, limits.keep),
        )
        retired = tuple(sorted(str(b) for (b,) in cur.fetchall()))
        return BackupOutcome("stored", files=checked.files, size=p.size, retired=retired)

    @staticmethod
    def _reject_backup(cur: psycopg.Cursor[TupleRow], topic: str, reason: str, kept: bytes) -> BackupOutcome:
        cur.execute(
            "INSERT INTO rejected (topic, reason, payload) VALUES (%s, %s, %s)", (topic, reason, kept)
        )
        return BackupOutcome("rejected", reason)

    @staticmethod
    def _drop_over_size(
        cur: psycopg.Cursor[TupleRow], p: Part, max_bytes: int
    ) -> tuple[tuple[str, str], ...]:
        """The gateway's other incomplete backups, oldest first, while its parts held pass `max_bytes`
        or it holds more than INCOMPLETE_BACKUPS_HELD incomplete backups (a hostile gateway's
        one-byte last parts of ever new backups would otherwise add rows for 48 h)."""
        cur.execute(
            "SELECT backup, sum(octet_length(data)) FROM state_backup_parts WHERE site = %s AND gateway = %s"
            " GROUP BY backup ORDER BY min(received_at), backup",
            (p.site, p.gateway),
        )
        held = [(str(backup), int(size)) for backup, size in cur.fetchall()]
        total, count = sum(size for _, size in held), len(held)
        dropped: list[tuple[str, str]] = []
        for backup, size in held:
            if total <= max_bytes and count <= INCOMPLETE_BACKUPS_HELD:
                break
            if backup == p.backup:
                continue
            why = (
                f"incomplete, and the gateway's parts held passed {max_bytes} bytes"
                if total > max_bytes
                else f"incomplete, and the gateway held more than {INCOMPLETE_BACKUPS_HELD} incomplete ones"
            )
            cur.execute(
                "DELETE FROM state_backup_parts WHERE site = %s AND gateway = %s AND backup = %s",
                (p.site, p.gateway, backup),
            )
            total, count = total - size, count - 1
            dropped.append((backup, why))
        return tuple(dropped)

    def sweep_backup_parts(
        self, max_age_s: float = STATE_BACKUP_PARTS_MAX_AGE_S
    ) -> list[tuple[str, str, str, int]]:
        """Drop the parts of every backup whose first part came more than `max_age_s` ago (it will
        not be completed: the gateway sends a new one); (site, gateway, backup, parts held) of each.
        A gateway another consumer is storing parts of is left for the next sweep."""
        try:
            with _db_errors():
                return self._sweep_backup_parts(max_age_s)
        except (StoreError, StoreRefusedError):
            self.close()
            raise

    def _sweep_backup_parts(self, max_age_s: float) -> list[tuple[str, str, str, int]]:
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "SELECT DISTINCT site, gateway FROM state_backup_parts"
                " WHERE received_at < now() - make_interval(secs => %s) ORDER BY 1, 2",
                (max_age_s,),
            )
            stale = [(str(site), str(gateway)) for site, gateway in cur.fetchall()]
        dropped: list[tuple[str, str, str, int]] = []
        for site, gateway in stale:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))",
                    (_STATE_BACKUP_LOCK, f"{site}/{gateway}"),
                )
                row = cur.fetchone()
                if row is None or not row[0]:
                    continue
                cur.execute(
                    "DELETE FROM state_backup_parts WHERE site = %s AND gateway = %s AND backup IN"
                    " (SELECT backup FROM state_backup_parts WHERE site = %s AND gateway = %s"
                    "  GROUP BY backup HAVING min(received_at) < now() - make_interval(secs => %s))"
                    " RETURNING backup",
                    (site, gateway, site, gateway, max_age_s),
                )
                counts: dict[str, int] = {}
                for (backup,) in cur.fetchall():
                    counts[str(backup)] = counts.get(str(backup), 0) + 1
                dropped += [(site, gateway, backup, n) for backup, n in sorted(counts.items())]
        return dropped
