ALTER TABLE todos DROP COLUMN erased_at;
ALTER TABLE events DROP COLUMN traceparent, DROP COLUMN actor, DROP COLUMN causation_id;
