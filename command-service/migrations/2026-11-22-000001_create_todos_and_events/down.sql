DROP TABLE idempotency_keys;
DROP TABLE events;
DROP TABLE todos;
