-- The cleanup task deletes expired keys (`created_at <= now() - IDEMPOTENCY_TTL_HOURS`) a
-- batch at a time: through this index it reads only the expired ones, never the whole table.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
