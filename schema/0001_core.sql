-- 0001: conversations (sessions, messages, FTS5), memories (FTS5), usage
-- ledger, daemon key/value state. Times are unix milliseconds (INTEGER).

CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    platform      TEXT NOT NULL,
    title         TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    message_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_update ON sessions (updated_at DESC, id DESC);
CREATE INDEX sessions_by_platform ON sessions (platform, updated_at DESC, id DESC);

CREATE TABLE messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    platform    TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content     TEXT NOT NULL,
    tool_calls  TEXT CHECK (tool_calls IS NULL OR json_valid(tool_calls)),
    tokens_used INTEGER NOT NULL DEFAULT 0 CHECK (tokens_used >= 0),
    created_at  INTEGER NOT NULL,
    -- caller-supplied id that makes an import idempotent
    external_id TEXT UNIQUE
);
CREATE INDEX messages_by_session ON messages (session_id, id);
CREATE INDEX messages_by_time ON messages (created_at);

CREATE VIRTUAL TABLE messages_fts USING fts5 (
    content,
    content = 'messages',
    content_rowid = 'id',
    tokenize = 'porter unicode61'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;

CREATE TABLE memories (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    content    TEXT NOT NULL,
    tags       TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tags)),
    source     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX memories_by_source ON memories (source);

CREATE VIRTUAL TABLE memories_fts USING fts5 (
    content,
    tags,
    content = 'memories',
    content_rowid = 'id',
    tokenize = 'porter unicode61'
);
CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts (rowid, content, tags) VALUES (new.id, new.content, new.tags);
END;
CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, content, tags) VALUES ('delete', old.id, old.content, old.tags);
END;
CREATE TRIGGER memories_fts_update AFTER UPDATE ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, content, tags) VALUES ('delete', old.id, old.content, old.tags);
    INSERT INTO memories_fts (rowid, content, tags) VALUES (new.id, new.content, new.tags);
END;

-- One row per finished run; `seq` never goes back (AUTOINCREMENT), so the hub
-- can drop a delta it has seen.
CREATE TABLE usage_ledger (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT,
    session_id TEXT,
    tokens_in  INTEGER NOT NULL DEFAULT 0 CHECK (tokens_in >= 0),
    tokens_out INTEGER NOT NULL DEFAULT 0 CHECK (tokens_out >= 0),
    tool_calls INTEGER NOT NULL DEFAULT 0 CHECK (tool_calls >= 0),
    created_at INTEGER NOT NULL,
    reported   INTEGER NOT NULL DEFAULT 0 CHECK (reported IN (0, 1))
);
CREATE INDEX usage_unreported ON usage_ledger (seq) WHERE reported = 0;
CREATE INDEX usage_by_time ON usage_ledger (created_at);

-- Small named values the daemon must keep across restarts.
CREATE TABLE daemon_state (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
