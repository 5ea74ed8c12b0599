-- Schema 1 of the reference ingest (docs/fleet.md). Applied once by `edge-centre migrate`, inside
-- one transaction, recorded in centre_migrations.

-- One row per (site, gateway, stream): the identity of a seq counter on one gateway.
CREATE TABLE streams (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site        text NOT NULL,
    gateway     text NOT NULL,
    stream      text NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    -- Gap detection: every seq up to here was received or reported as a gap (see gaps).
    checked_upto bigint,
    UNIQUE (site, gateway, stream)
);

-- One row per message (outbox row) ever committed: the set of seen (stream, seq). A message is
-- inserted here and its readings or events in the same transaction, only when its key is new, so
-- a duplicate delivery adds nothing anywhere.
CREATE TABLE messages (
    stream_id   integer NOT NULL REFERENCES streams (id),
    seq         bigint NOT NULL,
    sent_ns     bigint NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    items       integer NOT NULL,
    PRIMARY KEY (stream_id, seq)
);

CREATE TABLE readings (
    stream_id   integer NOT NULL,
    seq         bigint NOT NULL,
    tag         text NOT NULL,
    ts_ns       bigint NOT NULL,
    value       double precision,
    value_text  text,          -- strings, and the exact digits of integers beyond 2^53
    quality     text NOT NULL,
    reason      text,
    unit        text NOT NULL,
    source      text NOT NULL,
    -- A message can carry one tag several times (polls faster than the outbox flush), so the
    -- reading's own timestamp is part of its key.
    PRIMARY KEY (stream_id, seq, tag, ts_ns)
);

CREATE TABLE events (
    stream_id   integer NOT NULL,
    seq         bigint NOT NULL,
    idx         integer NOT NULL,   -- position in its message
    kind        text NOT NULL,
    source      text NOT NULL,
    ts_ns       bigint NOT NULL,
    severity    text NOT NULL,
    score       double precision,
    detail      jsonb NOT NULL,
    PRIMARY KEY (stream_id, seq, idx)
);
CREATE INDEX events_kind ON events (kind, ts_ns);

-- Missing seqs, reported once their timeout passed; `explained` names the gateway's own
-- buffer_eviction event when one covers the range, `filled_at` is set if they arrive after all.
CREATE TABLE gaps (
    stream_id   integer NOT NULL REFERENCES streams (id),
    first_seq   bigint NOT NULL,
    last_seq    bigint NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    explained   text,
    filled_at   timestamptz,
    PRIMARY KEY (stream_id, first_seq)
);

-- Messages that are not the documented payload: kept for a person to look at, never retried.
CREATE TABLE rejected (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic       text NOT NULL,
    reason      text NOT NULL,
    payload     bytea NOT NULL
);

-- For SCADA/BI: one row per reading with names and a timestamp, and the latest value of each tag.
CREATE VIEW tag_readings AS
SELECT s.site, s.gateway, s.stream, r.tag,
       to_timestamp(r.ts_ns / 1e9) AS ts, r.ts_ns,
       r.value, r.value_text, r.quality, r.reason, r.unit, r.source, r.seq
FROM readings r JOIN streams s ON s.id = r.stream_id;

CREATE VIEW tag_latest AS
SELECT DISTINCT ON (s.site, s.gateway, r.tag)
       s.site, s.gateway, s.stream, r.tag, to_timestamp(r.ts_ns / 1e9) AS ts,
       r.value, r.value_text, r.quality, r.unit
FROM readings r JOIN streams s ON s.id = r.stream_id
ORDER BY s.site, s.gateway, r.tag, r.ts_ns DESC;

CREATE VIEW gateway_events AS
SELECT s.site, s.gateway, e.kind, e.severity, to_timestamp(e.ts_ns / 1e9) AS ts, e.score,
       e.source, e.detail, e.seq
FROM events e JOIN streams s ON s.id = e.stream_id;

CREATE VIEW open_gaps AS
SELECT s.site, s.gateway, s.stream, g.first_seq, g.last_seq, g.last_seq - g.first_seq + 1 AS missing,
       g.detected_at, g.explained
FROM gaps g JOIN streams s ON s.id = g.stream_id
WHERE g.filled_at IS NULL;

-- A named view for one tag, for tools that want a table per signal:
--   SELECT create_tag_view('ps07_pump1_flow', 'north-plant', 'gw-ps07', 'pump1.flow');
CREATE FUNCTION create_tag_view(view_name text, p_site text, p_gateway text, p_tag text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE VIEW %I AS SELECT ts, ts_ns, value, value_text, quality, reason, unit '
        'FROM tag_readings WHERE site = %L AND gateway = %L AND tag = %L',
        view_name, p_site, p_gateway, p_tag);
END $$;
