-- Back to one position per insert (identity) and a published flag per row. Unstamped events
-- get positions after the stamped ones.
WITH pending AS (
  SELECT seq, row_number() OVER (ORDER BY seq) AS n FROM events WHERE position IS NULL
), top AS (SELECT coalesce(max(position), 0) AS p FROM events)
UPDATE events e SET position = top.p + pending.n FROM pending, top WHERE e.seq = pending.seq;

ALTER TABLE events ADD COLUMN payload JSONB, ADD COLUMN published_at TIMESTAMPTZ,
                   ADD COLUMN publish_attempts INTEGER NOT NULL DEFAULT 0, ADD COLUMN last_error TEXT;
UPDATE events SET payload = jsonb_build_object(
    'event_id', event_id, 'event_type', event_type, 'schema_version', 1, 'todo_id', todo_id,
    'version', version, 'position', 0, 'occurred_at', occurred_at,
    'correlation_id', correlation_id, 'data', data, 'changed', changed);
UPDATE events SET published_at = now()
  WHERE position <= (SELECT position FROM relay_cursor);
ALTER TABLE events ALTER COLUMN payload SET NOT NULL;
DROP TABLE relay_cursor;
ALTER TABLE events DROP COLUMN data, DROP COLUMN changed;

DROP INDEX events_unstamped_idx;
DROP INDEX events_position_key;
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events DROP COLUMN seq;
ALTER TABLE events ALTER COLUMN position SET NOT NULL;
ALTER TABLE events ADD PRIMARY KEY (position);
ALTER TABLE events ALTER COLUMN position ADD GENERATED ALWAYS AS IDENTITY;
SELECT setval(pg_get_serial_sequence('events', 'position'), coalesce((SELECT max(position) FROM events), 0) + 1, false);
CREATE INDEX events_unpublished_idx ON events (position) WHERE published_at IS NULL;
