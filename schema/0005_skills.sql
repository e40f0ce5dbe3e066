-- 0004: the skills index (FTS5 over name and description) and metadata of
-- the env keys the daemon set (never their values). Times are unix ms.

CREATE TABLE skills (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    -- directory relative to <hermes home>/skills, e.g. `research/arxiv`
    path         TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    category     TEXT,
    description  TEXT NOT NULL DEFAULT '',
    -- the whole YAML front matter as JSON (version, license, platforms, ...)
    front_matter TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(front_matter)),
    content_hash TEXT NOT NULL,
    -- what is wrong with SKILL.md, if anything; the skill is still listed
    error        TEXT,
    use_count    INTEGER NOT NULL DEFAULT 0 CHECK (use_count >= 0),
    -- SKILL.md size and mtime (ns) when indexed: unchanged ones are not re-read
    file_size    INTEGER NOT NULL,
    file_mtime   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX skills_by_name ON skills (name, path);
CREATE INDEX skills_by_category ON skills (category, name, path);

CREATE VIRTUAL TABLE skills_fts USING fts5 (
    name,
    description,
    content = 'skills',
    content_rowid = 'id',
    tokenize = 'porter unicode61'
);
CREATE TRIGGER skills_fts_insert AFTER INSERT ON skills BEGIN
    INSERT INTO skills_fts (rowid, name, description) VALUES (new.id, new.name, new.description);
END;
CREATE TRIGGER skills_fts_delete AFTER DELETE ON skills BEGIN
    INSERT INTO skills_fts (skills_fts, rowid, name, description) VALUES ('delete', old.id, old.name, old.description);
END;
CREATE TRIGGER skills_fts_update AFTER UPDATE OF name, description ON skills BEGIN
    INSERT INTO skills_fts (skills_fts, rowid, name, description) VALUES ('delete', old.id, old.name, old.description);
    INSERT INTO skills_fts (rowid, name, description) VALUES (new.id, new.name, new.description);
END;

CREATE TABLE env_keys (
    name   TEXT PRIMARY KEY,
    set_at INTEGER NOT NULL,
    set_by TEXT NOT NULL CHECK (set_by IN ('hub', 'tenant'))
);
