-- 0007: agent fidelity (issue 13).

-- An assistant message written from the output a run had when it ended
-- without completing (agent crash, daemon crash, stop, timeout, failure).
ALTER TABLE messages ADD COLUMN partial INTEGER NOT NULL DEFAULT 0 CHECK (partial IN (0, 1));

-- Approvals the agent asked for during a run and did not get (expired
-- unanswered, or denied): a JSON list of {reason, command, description,
-- pattern_key}.
ALTER TABLE runs ADD COLUMN refused_approvals TEXT
    CHECK (refused_approvals IS NULL OR json_valid(refused_approvals));

-- History sync used to skip every `api_server` session and move its
-- position past them for good; it now de-duplicates the daemon's own runs
-- by session. Re-scan the gateway's store once: rows already imported are
-- keyed by `statedb:<id>` and are not imported twice.
DELETE FROM daemon_state WHERE key = 'history_sync.last_message_id';
