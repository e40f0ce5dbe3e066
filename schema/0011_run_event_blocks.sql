-- 0010: a run's event log in blocks. One row holds the events of one relay
-- batch (consecutive seqs `first_seq`..=`last_seq`, at most 256 events),
-- packed in `events`: for each event a little-endian u32 byte length and
-- the name, then a u32 length and the text (store::runs). One B-tree
-- insert per batch instead of one per event (BENCHMARKS.md, "SSE relay").
-- `run_events` keeps what builds before this one logged, read beside the
-- blocks until retention prunes it: a run's rows there all come before
-- its blocks (this build goes on from `runs.last_seq`).
-- IF NOT EXISTS: a store set back to an older user_version (a downgrade,
-- tests/history_sync.rs) re-applies this file over its own tables.

CREATE TABLE IF NOT EXISTS run_event_blocks (
    run_id     TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL CHECK (last_seq >= first_seq),
    events     BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, first_seq)
) WITHOUT ROWID;
