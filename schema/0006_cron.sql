-- Agent cron: jobs, their firing history, and deliveries waiting for the hub.
-- (Numbered 0004 on the cron branch; renumber to its place at merge.)

CREATE TABLE cron_jobs (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    schedule         TEXT NOT NULL,
    timezone         TEXT NOT NULL DEFAULT 'UTC',
    prompt           TEXT NOT NULL,
    enabled          INTEGER NOT NULL DEFAULT 1,
    paused           INTEGER NOT NULL DEFAULT 0,
    -- scheduled | completed (one-shot fired, or repeat.times reached)
    state            TEXT NOT NULL DEFAULT 'scheduled',
    skills           TEXT,               -- JSON array of names, or NULL
    deliver          TEXT,
    repeat_times     INTEGER,
    repeat_completed INTEGER NOT NULL DEFAULT 0,
    -- when the schedule was set: intervals count from it, delays start there
    anchor_at        INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    last_run_at      INTEGER,
    last_status      TEXT,
    last_error       TEXT,
    next_run_at      INTEGER,
    origin           TEXT NOT NULL DEFAULT 'api'
);

CREATE TABLE cron_runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT NOT NULL REFERENCES cron_jobs(id) ON DELETE CASCADE,
    -- schedule | manual | catch_up | missed
    trigger      TEXT NOT NULL,
    scheduled_at INTEGER,
    fired_at     INTEGER NOT NULL,
    run_id       TEXT,
    -- running | completed | failed | cancelled | skipped | missed
    status       TEXT NOT NULL,
    finished_at  INTEGER,
    duration_ms  INTEGER,
    error        TEXT
);
CREATE INDEX cron_runs_by_job ON cron_runs(job_id, id);

CREATE TABLE cron_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    deliver         TEXT NOT NULL,
    output          TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT
);
CREATE INDEX cron_deliveries_due ON cron_deliveries(next_attempt_at);
