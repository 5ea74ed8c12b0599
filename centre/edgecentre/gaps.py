"""Gap detection per stream: a seq still missing after a timeout is reported, never guessed.

Each stream — one seq counter: (site, gateway, stream, epoch), a new outbox on the gateway being a
new epoch — has a watermark (`streams.checked_upto`): every seq up to it was received or reported.
A check walks the seqs above it in order. A hole followed by a message received more than
`timeout_s` ago is a gap: it is written to `gaps` (with the gateway's own `buffer_eviction` events
as the explanation when they cover the range together, `quota`/`age`/`disk_full`) and the watermark moves
past it. A younger hole stops the walk: the backlog lane of a reconnecting gateway delivers older
seqs after newer ones (docs/payload.md), so it is not a gap yet. A gap whose seqs arrive after
all is marked `filled_at`. A stream's watermark starts just below the lowest seq seen the first
time it is checked: history from before the ingest met the gateway is not a gap.

Checks from several consumers serialise on an advisory lock; one that finds it taken skips.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.rows import TupleRow

_GAP_LOCK = 0x5745_4750  # "WEGP"


@dataclass(frozen=True, slots=True)
class Gap:
    site: str
    gateway: str
    stream: str
    epoch: int
    first_seq: int
    last_seq: int
    explained: str | None


# The seq ranges the gateway's eviction events name for one stream. A bound that is not an integer
# within bigint (a string, 4.5, 1e30) is NULL and explains nothing: the events come from outside,
# and a malformed one must not break every later check.
def _bound(i: int) -> str:
    x = f"(e.detail->'streams'->%(stream)s->{i})"
    # CASE evaluates its WHENs in order: no cast is tried on what is not a number.
    return (
        f"CASE WHEN jsonb_typeof({x}) IS DISTINCT FROM 'number' THEN NULL"
        f" WHEN {x}::numeric = trunc({x}::numeric) AND abs({x}::numeric) <= 9223372036854775807"
        f" THEN {x}::numeric::bigint END"
    )


# Built from the constants above; every value is a parameter.
_EVICTED = (
    f"SELECT r.lo, r.hi, r.reason FROM (SELECT {_bound(0)} AS lo, {_bound(1)} AS hi,"  # noqa: S608
    " e.detail->>'reason' AS reason"
    " FROM events e JOIN streams s ON s.id = e.stream_id"
    " WHERE s.site = %(site)s AND s.gateway = %(gateway)s AND s.epoch = %(epoch)s"
    " AND e.kind = 'buffer_eviction') r"
    " WHERE r.lo <= %(last)s AND r.hi >= %(first)s ORDER BY r.lo"
)


def _explanation(
    cur: psycopg.Cursor[TupleRow], names: tuple[str, str, str, int], first: int, last: int
) -> str | None:
    """The gateway's `buffer_eviction` events that cover `first..last` together, or None.

    One hole is often many events: during an outage with a full quota every append evicts a row or
    two and announces just those. Only events of the same outbox (epoch) explain: another outbox's
    seqs are other messages."""
    site, gateway, stream, epoch = names
    cur.execute(
        _EVICTED,
        {"stream": stream, "site": site, "gateway": gateway, "epoch": epoch, "first": first, "last": last},
    )
    covered, reasons = first - 1, set()
    for lo, hi, reason in cur.fetchall():
        if int(lo) > covered + 1:
            break
        covered = max(covered, int(hi))
        reasons.add(str(reason))
        if covered >= last:
            return "buffer_eviction: " + ", ".join(sorted(reasons))
    return None


def check(conn: psycopg.Connection[TupleRow], timeout_s: float) -> list[Gap] | None:
    """One pass over every stream; the gaps found now (None if another consumer is checking)."""
    found: list[Gap] = []
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (_GAP_LOCK,))
        row = cur.fetchone()
        if row is None or not row[0]:
            return None
        cur.execute(
            "UPDATE streams s SET checked_upto = m.lo - 1"
            " FROM (SELECT stream_id, min(seq) AS lo FROM messages GROUP BY stream_id) m"
            " WHERE s.id = m.stream_id AND s.checked_upto IS NULL"
        )
        cur.execute(
            "SELECT s.id, s.site, s.gateway, s.stream, s.epoch, s.checked_upto, m.seq,"
            " extract(epoch FROM clock_timestamp() - m.received_at)::float8"
            " FROM streams s JOIN messages m ON m.stream_id = s.id AND m.seq > s.checked_upto"
            " ORDER BY s.id, m.seq"
        )
        rows = cur.fetchall()
        marks: dict[int, int] = {}
        blocked: set[int] = set()
        for sid_, site, gateway, stream, epoch, upto, seq_, age in rows:
            sid, seq = int(sid_), int(seq_)
            if sid in blocked:
                continue
            prev = marks.get(sid, int(upto))
            if seq > prev + 1:
                if float(age) < timeout_s:
                    blocked.add(sid)
                    continue
                names = (str(site), str(gateway), str(stream), int(epoch))
                gap = Gap(*names, prev + 1, seq - 1, _explanation(cur, names, prev + 1, seq - 1))
                cur.execute(
                    "INSERT INTO gaps (stream_id, first_seq, last_seq, explained) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (sid, gap.first_seq, gap.last_seq, gap.explained),
                )
                found.append(gap)
            marks[sid] = seq
        for sid, mark in marks.items():
            cur.execute("UPDATE streams SET checked_upto = %s WHERE id = %s", (mark, sid))
        cur.execute(
            "UPDATE gaps g SET filled_at = now() WHERE g.filled_at IS NULL AND ("
            " SELECT count(*) FROM messages m WHERE m.stream_id = g.stream_id"
            " AND m.seq BETWEEN g.first_seq AND g.last_seq) = g.last_seq - g.first_seq + 1"
        )
    return found
