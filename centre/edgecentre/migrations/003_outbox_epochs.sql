-- Schema 3: outbox epochs (payload version 2, docs/payload.md). A gateway's seqs restart at 1 when
-- its outbox is new (first install, a replaced card, a damaged file moved aside); the payload's
-- `epoch` tells that outbox's messages from the earlier one's. A seq counter is therefore one
-- (site, gateway, stream, epoch): each epoch has a streams row of its own, so dedup, gap checks
-- and gap explanations stay within it. Version 1 messages (no epoch) are epoch 0.
ALTER TABLE streams ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE streams DROP CONSTRAINT streams_site_gateway_stream_key;
ALTER TABLE streams ADD CONSTRAINT streams_site_gateway_stream_epoch_key UNIQUE (site, gateway, stream, epoch);

-- seq is per epoch: the views that show it show the epoch too (as a last column, so existing
-- queries by column name keep working).
CREATE OR REPLACE VIEW tag_readings AS
SELECT s.site, s.gateway, s.stream, r.tag,
       to_timestamp(r.ts_ns / 1e9) AS ts, r.ts_ns,
       r.value, r.value_text, r.quality, r.reason, r.unit, r.source, r.seq, s.epoch
FROM readings r JOIN streams s ON s.id = r.stream_id
WHERE NOT r.repeat;

CREATE OR REPLACE VIEW gateway_events AS
SELECT s.site, s.gateway, e.kind, e.severity, to_timestamp(e.ts_ns / 1e9) AS ts, e.score,
       e.source, e.detail, e.seq, s.epoch
FROM events e JOIN streams s ON s.id = e.stream_id;

CREATE OR REPLACE VIEW open_gaps AS
SELECT s.site, s.gateway, s.stream, g.first_seq, g.last_seq, g.last_seq - g.first_seq + 1 AS missing,
       g.detected_at, g.explained, s.epoch
FROM gaps g JOIN streams s ON s.id = g.stream_id
WHERE g.filled_at IS NULL;
