-- 0005: runs (one agent turn each) and their event logs.

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    gateway_run_id   TEXT,
    session_id       TEXT NOT NULL,
    platform         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN
                     ('queued', 'running', 'waiting_for_approval', 'stopping', 'completed', 'failed', 'cancelled')),
    input            TEXT NOT NULL CHECK (json_valid(input)),
    instructions     TEXT,
    output           TEXT,
    error_code       TEXT,
    error_message    TEXT,
    usage            TEXT CHECK (usage IS NULL OR json_valid(usage)),
    pending_approval TEXT CHECK (pending_approval IS NULL OR json_valid(pending_approval)),
    tool_calls       INTEGER NOT NULL DEFAULT 0,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX runs_by_time ON runs (created_at DESC, id DESC);
CREATE INDEX runs_by_session ON runs (session_id, created_at DESC, id DESC);
CREATE INDEX runs_by_status ON runs (status, created_at DESC, id DESC);

CREATE TABLE run_events (
    run_id     TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    name       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
