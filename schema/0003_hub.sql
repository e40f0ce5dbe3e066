-- 0003: agent running time per UTC hour, for the usage report. The hub
-- link's recorder fills it from the agent status (state `running`), so it
-- needs nothing from the supervisor's own records. Times are unix ms.
CREATE TABLE agent_uptime_hours (
    hour_start INTEGER PRIMARY KEY CHECK (hour_start % 3600000 = 0),
    running_ms INTEGER NOT NULL DEFAULT 0 CHECK (running_ms BETWEEN 0 AND 3600000)
);
