-- 0008: hub-driven agent configuration (issue 14): the agent policy, the
-- MCP connections and the specialization the hub pushed, applied to the
-- gateway's managed scope and the Hermes home.

-- Every policy version received. One row is `applied` (the one in force);
-- older ones are `superseded`, one the gateway refused is `rolled_back`.
-- The highest version ever received bounds the next (monotonic, 409).
CREATE TABLE agent_policy (
    version     INTEGER PRIMARY KEY CHECK (version >= 1),
    body        TEXT NOT NULL CHECK (json_valid(body)),
    received_at INTEGER NOT NULL,
    applied_at  INTEGER,
    -- Set once a gateway started and ran with this policy in place.
    proven_at   INTEGER,
    state       TEXT NOT NULL CHECK (state IN ('applied', 'superseded', 'rolled_back')),
    error       TEXT
);
CREATE UNIQUE INDEX agent_policy_one_applied ON agent_policy (state) WHERE state = 'applied';

-- The values the policy's defaults wrote into the tenant's config.yaml: a
-- key still holding it is the default's, any other value the tenant's.
CREATE TABLE policy_defaults_written (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL CHECK (json_valid(value))
);

-- MCP servers the hub connected (`mcp_servers` of the managed config.yaml).
CREATE TABLE agent_connections (
    name       TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64),
    spec       TEXT NOT NULL CHECK (json_valid(spec)),
    updated_at INTEGER NOT NULL
);

-- The specialization in force (at most one) and the files it installed.
CREATE TABLE agent_specialization (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    version    INTEGER NOT NULL CHECK (version >= 1),
    body       TEXT NOT NULL CHECK (json_valid(body)),
    applied_at INTEGER NOT NULL
);
CREATE TABLE specialization_files (
    path   TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL
);
