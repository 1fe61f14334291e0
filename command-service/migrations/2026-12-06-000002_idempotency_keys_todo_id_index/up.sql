-- `command-service erase <id>` rewrites the stored answer of the todo's creation: through this
-- index it finds that one row (the answer's `id`), never reading the whole table while it holds
-- the todo's row lock. Built CONCURRENTLY (metadata.toml: outside a transaction), so writes of
-- new keys go on while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idempotency_keys_todo_id_idx
    ON idempotency_keys ((response_body->>'id'));
