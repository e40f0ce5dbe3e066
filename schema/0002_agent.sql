-- Gateway supervisor: every agent state transition, newest last. Bounded:
-- the supervisor prunes old rows. The desired state and the running
-- gateway's identity live in daemon_state ('agent.desired', 'gateway.process').
CREATE TABLE agent_transitions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,          -- unix ms
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    reason     TEXT NOT NULL,
    pid        INTEGER,
    exit_code  INTEGER,
    signal     INTEGER,
    delay_ms   INTEGER,                   -- backoff chosen, for backoff/failed
    detail     TEXT
);
CREATE INDEX agent_transitions_at ON agent_transitions (at);
