-- A todo's optional due date (events of schema_version 2 carry it as data.due_at). Nullable
-- and without a default: adding it rewrites no row and takes only a brief lock.
ALTER TABLE todos ADD COLUMN due_at timestamptz;
