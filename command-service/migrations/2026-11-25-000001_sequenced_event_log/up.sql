-- Writers commit in parallel: an event is appended with no position, in the same statement as
-- its todo change, and takes no lock that other writers share. The sequencer (one at a time,
-- under a transaction-level advisory lock) stamps committed events with positions
-- max(position)+1, +2, … in `seq` order, so positions are gapless and increase in the order
-- events became visible to the sequencer: a reader of the feed (`position > N`) never skips an
-- event that is stamped after it read. Each todo's events stay in version order, because a
-- todo's next event is inserted (taking a higher `seq`) only after its previous one committed.

ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ALTER COLUMN position DROP IDENTITY IF EXISTS;
ALTER TABLE events ALTER COLUMN position DROP NOT NULL;
ALTER TABLE events ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY;
-- (Rows written before this migration already have positions; their `seq` order is moot.)
ALTER TABLE events ADD PRIMARY KEY (seq);
CREATE UNIQUE INDEX events_position_key ON events (position) WHERE position IS NOT NULL;
CREATE INDEX events_unstamped_idx ON events (seq) WHERE position IS NULL;

-- The envelope is rebuilt from columns; only what has no column of its own is JSON.
ALTER TABLE events ADD COLUMN data JSONB, ADD COLUMN changed JSONB NOT NULL DEFAULT '[]';
UPDATE events SET data = NULLIF(payload -> 'data', 'null'::jsonb),
                  changed = coalesce(payload -> 'changed', '[]'::jsonb);

-- Publishing is tracked by one cursor (everything up to `position` is confirmed by RabbitMQ)
-- instead of a flag on every row: positions are stamped in order, so the published events
-- are always a prefix of the log.
CREATE TABLE relay_cursor (
    singleton        BOOLEAN     PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    position         BIGINT      NOT NULL,
    publish_attempts INTEGER     NOT NULL DEFAULT 0,
    last_error       TEXT,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO relay_cursor (position)
SELECT coalesce((SELECT min(position) - 1 FROM events WHERE published_at IS NULL),
                (SELECT max(position) FROM events), 0);

DROP INDEX events_unpublished_idx;
ALTER TABLE events DROP COLUMN payload, DROP COLUMN published_at,
                   DROP COLUMN publish_attempts, DROP COLUMN last_error;
