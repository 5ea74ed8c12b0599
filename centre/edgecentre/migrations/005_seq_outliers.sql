-- Schema 5: seqs far ahead of their stream (docs/fleet.md, "Gaps"). A buggy or hostile gateway
-- sending seq 2^63 - 1 moved its stream's gap watermark to the bigint maximum: every later message
-- was below it and no gap of that stream was reported again. A seq more than a million ahead of its
-- stream, with the stream going on below it, is recorded here instead (once) and never walked past.
CREATE TABLE seq_outliers (
    stream_id    integer NOT NULL REFERENCES streams (id),
    seq          bigint NOT NULL,
    checked_upto bigint NOT NULL,   -- the stream's watermark when it was found
    detected_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, seq)
);

CREATE VIEW gateway_seq_outliers AS
SELECT s.site, s.gateway, s.stream, s.epoch, o.seq, o.checked_upto, o.detected_at
FROM seq_outliers o JOIN streams s ON s.id = o.stream_id;

-- The fill check looks at the gaps still open and found within its horizon (7 days), not at
-- every gap ever left open: explained evictions never fill, and they add up.
CREATE INDEX gaps_open ON gaps (detected_at) WHERE filled_at IS NULL;
