-- Schema 7: gateways' learnt-state backups (docs/fleet.md). A gateway sends its learnt state (the
-- .tar.gz `edge-agent state export` writes) on `{prefix}/{site}/{gateway}/state_backup`, cut into
-- parts that arrive in any order, maybe twice, and to different consumers of a shared
-- subscription. The parts wait here until all of them are in; the consumer that stores the last
-- one (under a lock per gateway) puts the archive together, checks it (size, SHA-256, a manifest of
-- this site and gateway, every file against it) and moves it to `state_backups`. A technician
-- fetches one with `edge-centre state-backup` and runs `edge-agent state import` on the new card.
CREATE TABLE state_backup_parts (
    site          text NOT NULL,
    gateway       text NOT NULL,
    backup        text NOT NULL,     -- e.g. 20261207T210000Z-3f9a0c1b2d4e
    part          integer NOT NULL,  -- 0-based
    parts         integer NOT NULL,
    size          bigint NOT NULL,   -- of the whole archive
    sha256        text NOT NULL,     -- of the whole archive
    created_ns    bigint NOT NULL,   -- when the gateway made it (its clock)
    agent_version text NOT NULL,
    data          bytea NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, gateway, backup, part)
);
-- Incomplete backups are dropped 48 h after their first part.
CREATE INDEX state_backup_parts_received ON state_backup_parts (received_at);

-- Complete, checked backups: the newest few of each gateway (`edge-centre ingest --keep-state-backups`).
CREATE TABLE state_backups (
    site          text NOT NULL,
    gateway       text NOT NULL,
    backup        text NOT NULL,
    created_ns    bigint NOT NULL,
    taken_at      timestamptz NOT NULL,  -- created_ns as a time: the gateway's clock
    received_at   timestamptz NOT NULL DEFAULT now(),  -- when its last part came: the centre's clock
    size          bigint NOT NULL,
    sha256        text NOT NULL,
    agent_version text NOT NULL,
    files         integer NOT NULL,      -- learnt-state files in it, as its manifest.json lists them
    archive       bytea NOT NULL,
    PRIMARY KEY (site, gateway, backup)
);
CREATE INDEX state_backups_newest ON state_backups (site, gateway, received_at DESC);
-- gzip is not compressed again: kept out of line as it is.
ALTER TABLE state_backups ALTER COLUMN archive SET STORAGE EXTERNAL;
ALTER TABLE state_backup_parts ALTER COLUMN data SET STORAGE EXTERNAL;

-- For the central team: every complete backup without its bytes, and the newest of each gateway
-- ("newest" by the centre's clock: a board without a battery-backed clock may date it wrongly).
CREATE VIEW gateway_state_backups AS
SELECT site, gateway, backup, taken_at, received_at, size, files, agent_version, sha256
FROM state_backups;

CREATE VIEW state_backups_latest AS
SELECT DISTINCT ON (site, gateway)
       site, gateway, backup, taken_at, received_at, size, files, agent_version, sha256,
       now() - received_at AS age
FROM state_backups
ORDER BY site, gateway, received_at DESC, created_ns DESC, backup DESC;

-- Backups of which some parts are in and some not yet (or never: dropped after 48 h).
CREATE VIEW state_backups_incomplete AS
SELECT site, gateway, backup, count(*) AS parts_held, max(parts) AS parts, max(size) AS size,
       min(received_at) AS first_part_at, max(received_at) AS last_part_at
FROM state_backup_parts
GROUP BY site, gateway, backup;

-- Every gateway the ingest has data of, with its newest backup (NULL: none yet) and its age: alert
-- on `age IS NULL OR age > interval '3 days'` for a gateway whose card would take its learning with it.
CREATE VIEW gateway_state_backup_age AS
SELECT g.site, g.gateway, l.backup, l.received_at, now() - l.received_at AS age
FROM (SELECT DISTINCT site, gateway FROM streams) g
LEFT JOIN state_backups_latest l USING (site, gateway);
