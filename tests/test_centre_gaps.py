"""Gap detection in a real PostgreSQL against seqs a gateway should never send: one far ahead of its
stream (the bigint maximum), a stream that really moved far on, and a watermark an earlier ingest
left at the maximum; and the fill check's cost kept to the gaps that can still fill."""

from __future__ import annotations

import pytest

from tests.support.centre import messages, query
from water_edge.centre.gaps import FAR
from water_edge.centre.store import Store

pytestmark = pytest.mark.slow

BIGINT_MAX = 2**63 - 1


def found(store: Store) -> list[tuple[int, int]]:
    return [(g.first_seq, g.last_seq) for g in store.check_gaps(timeout_s=0) or []]


def test_one_seq_at_the_bigint_maximum_is_an_outlier_and_later_gaps_are_still_found(centre_db: str) -> None:
    # Before: the check reported seqs 4..2^63-2 missing and moved the stream's watermark to 2^63-1;
    # every later message was below it, and 6..7 and 30..34 were never reported.
    store = Store(centre_db)
    try:
        store.commit(messages("gw1", [1, 2, 3]))
        assert found(store) == []
        store.commit(messages("gw1", [BIGINT_MAX]))  # a buggy or hostile gateway
        assert found(store) == [], "alone, with nothing after it, it is not judged yet"
        store.commit(messages("gw1", [4, 5, 8]))  # the stream goes on below it; 6 and 7 lost
        assert found(store) == [(6, 7)]
        store.commit(messages("gw1", [*range(9, 30), 35]))
        assert found(store) == [(30, 34)]
        assert found(store) == [], "the outlier is recorded once, not again at every check"
    finally:
        store.close()
    assert query(centre_db, "SELECT gateway, seq, checked_upto FROM gateway_seq_outliers") == [
        ("gw1", BIGINT_MAX, 8)
    ]
    assert query(centre_db, "SELECT first_seq, last_seq FROM open_gaps ORDER BY 1") == [(6, 7), (30, 34)]


def test_a_stream_that_really_went_on_far_ahead_has_its_gap_reported_once_it_goes_on_there(
    centre_db: str,
) -> None:
    far = (
        3 + FAR + 10
    )  # a counter that jumped (or a gap of more than FAR seqs evicted): the stream goes on there
    store = Store(centre_db)
    try:
        store.commit(messages("gw1", [1, 2, 3]))
        store.commit(messages("gw1", [far]))
        assert found(store) == [], "one far seq with nothing after it: not a gap yet"
        store.commit(messages("gw1", [far + 1, far + 3]))
        assert found(store) == [(4, far - 1)]
        assert found(store) == [(far + 2, far + 2)], "and the gaps after it, from there on"
    finally:
        store.close()
    assert query(centre_db, "SELECT count(*) FROM seq_outliers") == [(0,)]


def test_a_watermark_an_earlier_ingest_left_at_the_bigint_maximum_does_not_break_the_check(
    centre_db: str,
) -> None:
    store = Store(centre_db)
    try:
        store.commit(messages("gw1", [1, 2, BIGINT_MAX]))
        query(centre_db, "UPDATE streams SET checked_upto = %s RETURNING id", BIGINT_MAX)
        store.commit(messages("gw1", [3]))
        assert found(store) == []  # before: the same; it must not fail on bigint arithmetic either
    finally:
        store.close()


def test_an_open_gap_older_than_the_fill_horizon_is_no_longer_counted_at_every_check(centre_db: str) -> None:
    # Every check counted the messages in every open gap, for ever: 100,000 open gaps (explained
    # evictions never fill) cost 0.17-0.25 s a check, 10 s apart. Late seqs come within the
    # consumers' session expiry (a day); a gap open for a week is left as it is.
    store = Store(centre_db)
    try:
        store.commit(messages("gw1", [1, 2, 5, 6, 9]))
        assert found(store) == [(3, 4), (7, 8)]
        query(
            centre_db,
            "UPDATE gaps SET detected_at = now() - interval '8 days' WHERE first_seq = 3 RETURNING 1",
        )
        store.commit(messages("gw1", [3, 4, 7, 8]))  # both late after all
        store.check_gaps(timeout_s=0)
    finally:
        store.close()
    assert query(centre_db, "SELECT first_seq FROM open_gaps") == [(3,)]
