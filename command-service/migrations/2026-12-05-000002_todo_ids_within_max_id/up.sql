-- Todo ids stay within 1..=2^53-1 (events::limits::MAX_ID), the largest integer JavaScript and
-- other JSON readers that read numbers as doubles keep exactly: the identity's sequence stops
-- there (a create past it fails rather than hand out an id a client would read wrong).
ALTER TABLE todos ALTER COLUMN id SET MAXVALUE 9007199254740991;
