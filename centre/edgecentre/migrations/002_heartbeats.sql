-- Schema 2: report-by-exception heartbeats (`"repeat": true` in the payload, docs/payload.md).
-- A heartbeat repeats a reading the gateway already sent (same tag, same ts, same value) in a
-- later message. It is kept, marked, as the sign that the value still held when that message
-- was sent; the per-tag views leave it out, so a trend does not show one acquisition many times.
-- A heartbeat whose original never reached the centre (an explained gap, or history from before
-- the ingest met the gateway) is only in `readings`, with repeat true.
ALTER TABLE readings ADD COLUMN repeat boolean NOT NULL DEFAULT false;

CREATE OR REPLACE VIEW tag_readings AS
SELECT s.site, s.gateway, s.stream, r.tag,
       to_timestamp(r.ts_ns / 1e9) AS ts, r.ts_ns,
       r.value, r.value_text, r.quality, r.reason, r.unit, r.source, r.seq
FROM readings r JOIN streams s ON s.id = r.stream_id
WHERE NOT r.repeat;
