-- 0009: agent releases installed side by side and switched by the daemon
-- (issue 15). The `current` symlink in the release directory says what the
-- supervisor starts; these rows say what the daemon knows of each release.
-- IF NOT EXISTS: a store set back to an older user_version (a downgrade,
-- tests/history_sync.rs) re-applies this file over its own tables.

CREATE TABLE IF NOT EXISTS agent_releases (
    version        TEXT PRIMARY KEY,
    state          TEXT NOT NULL
                   CHECK (state IN ('installing', 'ready', 'active', 'failed', 'quarantined')),
    -- The sha256 of the hermes-agent distribution the hub pinned, if any.
    sha256         TEXT CHECK (sha256 IS NULL OR (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*')),
    installed_at_ms INTEGER,
    size_bytes     INTEGER,
    last_error     TEXT,
    -- Health gates (and watch windows) this release failed; at
    -- `releases.quarantine_after` it is quarantined.
    gate_failures  INTEGER NOT NULL DEFAULT 0,
    updated_at_ms  INTEGER NOT NULL
);

-- At most one activation in flight, written before the gateway is touched
-- and deleted in the transaction that records its outcome: a row found at
-- start is a switch the daemon did not finish, rolled back to `previous`.
CREATE TABLE IF NOT EXISTS agent_release_switch (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    target        TEXT NOT NULL,
    -- What `current` pointed at before (NULL: no release, the configured
    -- gateway.command/venv), and what `previous` pointed at before.
    previous      TEXT,
    prior_previous TEXT,
    started_at_ms INTEGER NOT NULL
);
