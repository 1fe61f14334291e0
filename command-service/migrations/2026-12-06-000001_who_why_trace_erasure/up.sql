-- Version 3 of the event contract: what caused each event (the id of the request that wrote
-- it), who wrote it (the bearer token's name, or 'anonymous'), and the W3C trace context of
-- the request, which the relay sends as the message's `traceparent` header. A todo's
-- `erased_at` says when its title and description were erased from it and from every event of
-- its history. All nullable and without a default: adding them rewrites no row and takes only
-- a brief lock, and the rows written before read as "not recorded".
ALTER TABLE events
    ADD COLUMN causation_id text,
    ADD COLUMN actor text,
    ADD COLUMN traceparent text;
ALTER TABLE todos ADD COLUMN erased_at timestamptz;
