-- Schema 4: a fingerprint per message, so that a second message *with other content* under a seq
-- already held is told from a resend (the same row again, which is harmless and dropped). Two
-- gateways publishing as one - an SD card cloned from a running gateway, with its identity and its
-- outbox's epoch - number their rows alike; without this the centre kept whichever came first and
-- dropped the other's as duplicates, without a word.
ALTER TABLE messages ADD COLUMN fingerprint bigint;  -- null for messages stored before schema 4

-- Every such message: its seq, what the stored one and it fingerprint to, when it came.
CREATE TABLE conflicts (
    stream_id           integer NOT NULL REFERENCES streams (id),
    seq                 bigint NOT NULL,
    stored_fingerprint  bigint NOT NULL,
    fingerprint         bigint NOT NULL,
    sent_ns             bigint NOT NULL,
    received_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conflicts_stream ON conflicts (stream_id, seq);

CREATE VIEW gateway_conflicts AS
SELECT s.site, s.gateway, s.stream, s.epoch, c.seq, c.received_at, c.sent_ns
FROM conflicts c JOIN streams s ON s.id = c.stream_id;
