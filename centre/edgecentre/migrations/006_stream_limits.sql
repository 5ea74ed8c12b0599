-- Schema 6: a bound on the `streams` rows one gateway can make (docs/fleet.md, "A hostile
-- gateway"). A seq counter is one (site, gateway, stream, epoch) and a `streams` row; a broken or
-- hostile gateway that names a new epoch (or stream, or site) in every message made a row of each,
-- 30,000 in a walk, and every gap check walks every stream. The ingest counts a gateway's rows made
-- in the last 24 hours (`first_seen`) before it makes another, and refuses the messages of a new
-- one past its limit (`edge-centre ingest --new-streams-per-day`, 1,000 by default): they are kept
-- in `rejected` with the reason, and counted here, one row per gateway.
CREATE INDEX streams_gateway_first_seen ON streams (gateway, first_seen);

CREATE TABLE stream_refusals (
    gateway          text PRIMARY KEY,   -- the topic's gateway level, which the broker's ACL binds
    refused          bigint NOT NULL,    -- messages refused, all told
    first_refused_at timestamptz NOT NULL DEFAULT now(),
    last_refused_at  timestamptz NOT NULL DEFAULT now(),
    -- The last refused message's stream identity (a gateway naming a new site each time counts once).
    last_site        text NOT NULL,
    last_stream      text NOT NULL,
    last_epoch       bigint NOT NULL
);

CREATE VIEW gateway_stream_refusals AS
SELECT gateway, refused, first_refused_at, last_refused_at, last_site, last_stream, last_epoch,
       (SELECT count(*) FROM streams s WHERE s.gateway = r.gateway
          AND s.first_seen > now() - interval '1 day') AS streams_last_day
FROM stream_refusals r;
