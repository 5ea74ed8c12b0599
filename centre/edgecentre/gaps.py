"""Gap detection per stream: a seq still missing after a timeout is reported, never guessed.

Each stream — one seq counter: (site, gateway, stream, epoch), a new outbox on the gateway being a
new epoch — has a watermark (`streams.checked_upto`): every seq up to it was received or reported.
A check walks the seqs above it in order. A hole followed by a message received more than
`timeout_s` ago is a gap: it is written to `gaps` (with the gateway's own `buffer_eviction` events
as the explanation when they cover the range together, `quota`/`age`/`disk_full`) and the watermark moves
past it. A younger hole stops the walk: the backlog lane of a reconnecting gateway delivers older
seqs after newer ones (docs/payload.md), so it is not a gap yet. A gap whose seqs arrive after
all is marked `filled_at` (looked for during `FILL_HORIZON` after the gap was found: by then the
backlog and the consumers' sessions are long delivered). A stream's watermark starts just below the
lowest seq seen the first time it is checked: history from before the ingest met the gateway is not
a gap.

A gateway whose outbox outlives a change of payload version counts on in one outbox under two
epochs at the centre: a release on payload version 1 sends no `epoch` (stored as epoch 0), a later
one sends the outbox's own. A rollback to such a release, and the update after it, leave each
epoch's counter with a hole its other epoch holds. A hole whose every seq was received under the
other epoch (epoch 0 for an outbox's own, any for epoch 0), sent between the messages on either
side of it, is recorded as explained by that (`payload v1: ...`), not as data lost.

A hole of more than `FAR` seqs is no plausible loss, and the watermark would leave the stream behind
it: a seq of 2^63 - 1 from a buggy or hostile gateway moved it to the bigint maximum, and every later
message looked old. Such a hole is a gap only once the stream has gone on past it (a message beyond
it, and none below it received since); while the stream goes on below it, the message after it is
an outlier: recorded once in `seq_outliers`, never walked past. A check reads at most two messages
beyond `FAR` per stream, so a run of far seqs costs it nothing more.

Checks from several consumers serialise on an advisory lock; one that finds it taken skips.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import psycopg
from psycopg.rows import TupleRow

from water_edge.centre.burst_log import BurstLog

_GAP_LOCK = 0x5745_4750  # "WEGP"
# A gap of more than a million seqs (2.3 days of a stream flushing every 200 ms, the default, with
# every row evicted) must be confirmed by the stream going on past it. It is also the most a single
# wild seq within it can hold gap detection back: the stream catches up with the watermark.
FAR: Final = 1_000_000
FILL_HORIZON: Final = "7 days"
_BIGINT_MAX: Final = 2**63 - 1


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


# The same seqs of the same gateway's stream under the epoch a release of the other payload version
# names its outbox by (v1: 0, v2: its own), each sent between the two messages around the hole.
_ELSEWHERE = (
    "SELECT o.epoch FROM streams o JOIN messages m ON m.stream_id = o.id"
    " WHERE o.site = %(site)s AND o.gateway = %(gateway)s AND o.stream = %(stream)s"
    " AND o.epoch <> %(epoch)s AND (o.epoch = 0 OR %(epoch)s = 0)"
    " AND m.seq BETWEEN %(first)s AND %(last)s"
    " AND m.sent_ns > (SELECT sent_ns FROM messages WHERE stream_id = %(sid)s AND seq = %(first)s - 1)"
    " AND m.sent_ns < (SELECT sent_ns FROM messages WHERE stream_id = %(sid)s AND seq = %(last)s + 1)"
    " GROUP BY o.epoch HAVING count(*) = %(last)s - %(first)s + 1 ORDER BY o.epoch LIMIT 1"
)


def _other_version(
    cur: psycopg.Cursor[TupleRow], sid: int, names: tuple[str, str, str, int], first: int, last: int
) -> str | None:
    """Why `first..last` is no loss if a release of the other payload version sent it from this
    outbox, or None.

    Only a hole whose every seq is there, each sent after the message below the hole and before the
    one above it: a gateway's earlier outbox (a card replaced) also has these seqs, sent long before."""
    site, gateway, stream, epoch = names
    cur.execute(
        _ELSEWHERE,
        {"site": site, "gateway": gateway, "stream": stream, "epoch": epoch, "sid": sid, "first": first,
         "last": last},
    )  # fmt: skip
    row = cur.fetchone()
    if row is None:
        return None
    if epoch != 0:
        return "payload v1: stored under epoch 0 (a release before epochs ran on this outbox)"
    return f"payload v2: stored under epoch {int(row[0])} (a release with epochs ran on this outbox)"


# The first time a stream is checked, its watermark goes just below its lowest seq (one index probe
# per new stream, not an aggregate over every message).
_START = (
    "UPDATE streams s SET checked_upto = (SELECT min(m.seq) FROM messages m WHERE m.stream_id = s.id) - 1"
    " WHERE s.checked_upto IS NULL AND EXISTS (SELECT 1 FROM messages m WHERE m.stream_id = s.id)"
)
# Per stream, the seqs above its watermark up to FAR beyond it, and the first two further on.
_UPTO_FAR = f"LEAST(s.checked_upto, {_BIGINT_MAX} - %(far)s) + %(far)s"  # no bigint overflow
_WALK = (
    "SELECT s.id, s.site, s.gateway, s.stream, s.epoch, s.checked_upto, m.seq, m.received_at,"  # noqa: S608
    " extract(epoch FROM clock_timestamp() - m.received_at)::float8"
    " FROM streams s CROSS JOIN LATERAL ("
    " (SELECT seq, received_at FROM messages WHERE stream_id = s.id"
    f" AND seq > s.checked_upto AND seq <= {_UPTO_FAR} ORDER BY seq)"
    " UNION ALL"
    f" (SELECT seq, received_at FROM messages WHERE stream_id = s.id AND seq > {_UPTO_FAR}"
    " ORDER BY seq LIMIT 2)) m"
    " WHERE s.checked_upto IS NOT NULL ORDER BY s.id, m.seq"
)
_FILLED = (
    "UPDATE gaps g SET filled_at = now() WHERE g.filled_at IS NULL"  # noqa: S608
    f" AND g.detected_at > now() - interval '{FILL_HORIZON}' AND ("
    " SELECT count(*) FROM messages m WHERE m.stream_id = g.stream_id"
    " AND m.seq BETWEEN g.first_seq AND g.last_seq) = g.last_seq - g.first_seq + 1"
)

_Row = tuple[int, datetime, float]  # seq, received_at, age in seconds


@dataclass(frozen=True, slots=True)
class _Stream:
    sid: int
    names: tuple[str, str, str, int]  # site, gateway, stream, epoch
    upto: int  # its watermark


def check(conn: psycopg.Connection[TupleRow], timeout_s: float, alerts: BurstLog) -> list[Gap] | None:
    """One pass over every stream; the gaps found now (None if another consumer is checking)."""
    found: list[Gap] = []
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (_GAP_LOCK,))
        row = cur.fetchone()
        if row is None or not row[0]:
            return None
        cur.execute(_START)
        cur.execute(_WALK, {"far": FAR})
        marks: dict[int, int] = {}
        for head, rows in itertools.groupby(cur.fetchall(), key=lambda r: r[:6]):
            sid, site, gateway, stream, epoch, upto = head
            one = _Stream(int(sid), (str(site), str(gateway), str(stream), int(epoch)), int(upto))
            seqs = [(int(r[6]), r[7], float(r[8])) for r in rows]
            mark = _walk(cur, one, seqs, timeout_s=timeout_s, found=found, alerts=alerts)
            if mark != one.upto:
                marks[one.sid] = mark
        if marks:  # one statement, not one per stream: a fleet's streams are thousands
            cur.execute(
                "UPDATE streams s SET checked_upto = v.mark"
                " FROM unnest(%s::int[], %s::bigint[]) AS v (id, mark) WHERE s.id = v.id",
                (list(marks), list(marks.values())),
            )
        cur.execute(_FILLED)
    return found


def _walk(
    cur: psycopg.Cursor[TupleRow],
    one: _Stream,
    rows: Sequence[_Row],
    *,
    timeout_s: float,
    found: list[Gap],
    alerts: BurstLog,
) -> int:
    """Walk one stream's seqs above its watermark; its new watermark. The gaps go into `found`."""
    prev, prev_at = one.upto, None
    for i, (seq, received_at, age) in enumerate(rows):
        if seq > prev + 1:
            if age < timeout_s:
                break  # young: the backlog lane may still bring the seqs before it
            if seq - prev > FAR:
                below = prev_at if prev_at is not None else _received_at(cur, one.sid, prev)
                if below is not None and below > received_at:  # the stream went on below it
                    _outlier(cur, one, seq, prev, alerts)
                    break
                if i + 1 == len(rows):
                    break  # alone, the stream quiet since: wait until it goes on, past it or below it
            first, last = prev + 1, seq - 1
            why = _explanation(cur, one.names, first, last) or _other_version(
                cur, one.sid, one.names, first, last
            )
            gap = Gap(*one.names, first, last, why)
            cur.execute(
                "INSERT INTO gaps (stream_id, first_seq, last_seq, explained) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (one.sid, gap.first_seq, gap.last_seq, gap.explained),
            )
            found.append(gap)
        prev, prev_at = seq, received_at
    return prev


def _received_at(cur: psycopg.Cursor[TupleRow], sid: int, seq: int) -> datetime | None:
    cur.execute("SELECT received_at FROM messages WHERE stream_id = %s AND seq = %s", (sid, seq))
    row = cur.fetchone()
    return None if row is None else row[0]


def _outlier(cur: psycopg.Cursor[TupleRow], one: _Stream, seq: int, upto: int, alerts: BurstLog) -> None:
    """Record a seq far ahead of a stream that went on below it (once), and log it then."""
    cur.execute(
        "INSERT INTO seq_outliers (stream_id, seq, checked_upto) VALUES (%s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING seq",
        (one.sid, seq, upto),
    )
    if cur.fetchone() is not None:
        site, gateway, stream, epoch = one.names
        alerts.warning(
            "ingest.seq_outlier",
            site=site,
            gateway=gateway,
            stream=stream,
            epoch=epoch,
            seq=seq,
            checked_upto=upto,
            why="a seq far ahead of its stream, which went on below it: not adopted",
        )
