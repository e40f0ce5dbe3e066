-- 0010: the filter columns of every message beside its id, in one small
-- covering index, so a filtered search checks each match there (36 bytes
-- a message at a million) instead of reading the message row with its
-- content.
-- SQLite keeps an index in step with every write to `messages` (append,
-- import, edit, delete, cascade), so no trigger is needed.
-- IF NOT EXISTS: a store set back to an older user_version (a downgrade,
-- tests/history_sync.rs) re-applies this file over its own index.
CREATE UNIQUE INDEX IF NOT EXISTS messages_search_facets
    ON messages (id, platform, role, created_at, session_id);
