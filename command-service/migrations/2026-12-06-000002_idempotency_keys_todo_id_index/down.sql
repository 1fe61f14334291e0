DROP INDEX CONCURRENTLY IF EXISTS idempotency_keys_todo_id_idx;
