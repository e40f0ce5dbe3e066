//! Upkeep of the message search index (FTS5 `messages_fts`): merging its
//! segments back into one.
//!
//! FTS5 writes the terms of every transaction as a new segment and merges
//! segments only partly as it goes (`automerge`). A search opens an
//! iterator on every term in every segment, and a page of hits seeks each
//! of them once per hit to build its snippet: at a million messages
//! appended in batches the index held 14+ segments and the page cost more
//! than ranking every match (BENCHMARKS.md, "Search at a million
//! messages"). With one segment every seek, and the ranking itself, is
//! cheaper. FTS5's incremental `merge` does the work in bounded steps, one
//! write transaction each, so appends wait for one step at most. Each step
//! deletes the input pages it has consumed (`fts5TrimSegments`), so the
//! merge needs about a step's worth of free space, not a second index
//! (at a million messages the database and its WAL grew 962 → 970 MiB).

use rusqlite::Connection;

use super::StoreResult;

/// Segments the index may hold before upkeep merges them all into one. The
/// merge rewrites the whole index (a few seconds of one core at a million
/// messages), so it is not worth doing for a few small new segments.
pub const SEGMENTS_MAX: i64 = 8;

/// Pages (FTS5 `pgsz`: 1,000 bytes since migration 0012) one merge step
/// writes: bounds how long a step holds the writer (measured in
/// BENCHMARKS.md; about 2 MB, as 500 of the old 4 KB pages were).
pub const STEP_PAGES: i64 = 2000;

/// Steps one upkeep takes at most; the next upkeep goes on where it
/// stopped (FTS5 keeps the merge's progress in the index).
pub const MAX_STEPS: usize = 100_000;

/// The number of segments in the index (one row per leaf page in
/// `messages_fts_idx`: a scan of a few MB at a million messages).
pub fn segments(conn: &Connection) -> StoreResult<i64> {
    Ok(conn.query_row(
        "SELECT count(DISTINCT segid) FROM messages_fts_idx",
        [],
        |r| r.get(0),
    )?)
}

/// One bounded step of merging every segment into one. Returns whether it
/// did any work (false: the index is one segment, or nothing is left).
pub fn merge_step(conn: &Connection) -> StoreResult<bool> {
    let before = conn.total_changes();
    conn.execute(
        "INSERT INTO messages_fts (messages_fts, rank) VALUES ('merge', ?1)",
        [-STEP_PAGES],
    )?;
    // FTS5's documented test: a step that wrote anything changes at least
    // two rows.
    Ok(conn.total_changes() - before >= 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conversations::{AppendMessages, NewMessage, Role, append};
    use crate::store::message_search::{SearchFilter, search};

    fn batch(i: usize) -> AppendMessages {
        AppendMessages {
            platform: Some("web".into()),
            title: None,
            messages: (0..5)
                .map(|k| NewMessage {
                    role: Role::User,
                    content: format!("word{} common w{k} batch{i}", i % 7),
                    tool_calls: None,
                    tokens_used: None,
                    created_at: None,
                    external_id: None,
                })
                .collect(),
        }
    }

    fn hits(c: &Connection, q: &str) -> Vec<(i64, String, Option<f64>)> {
        let f = SearchFilter {
            query: q.into(),
            limit: 100,
            ..Default::default()
        };
        search(c, &f)
            .expect("search")
            .items
            .into_iter()
            .map(|h| (h.message_id, h.snippet, h.score))
            .collect()
    }

    #[test]
    fn merging_leaves_one_segment_and_the_same_results() {
        let mut c = Connection::open_in_memory().expect("open");
        crate::store::rank::register(&c).expect("rank");
        crate::store::migrations::apply(&mut c).expect("migrate");
        // One transaction (one segment) per batch.
        for i in 0..40 {
            append(&mut c, &format!("s{}", i % 3), &batch(i)).expect("append");
        }
        assert!(segments(&c).expect("segments") > 1);
        let before: Vec<_> = ["common", "word3", "w2 batch1*"]
            .iter()
            .map(|q| hits(&c, q))
            .collect();
        let mut steps = 0;
        while merge_step(&c).expect("step") {
            steps += 1;
            assert!(steps < 1000, "the merge does not end");
        }
        assert!(steps >= 1);
        assert_eq!(segments(&c).expect("segments"), 1);
        assert!(!merge_step(&c).expect("no-op"), "one segment: no work");
        let after: Vec<_> = ["common", "word3", "w2 batch1*"]
            .iter()
            .map(|q| hits(&c, q))
            .collect();
        assert_eq!(before, after);
        assert_eq!(before[0].len(), 100);
        c.execute(
            "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
        .expect("integrity");
    }

    /// Migration 0012: the index writes 1 KB leaf pages, so a doclist of
    /// a few KB gets a doclist index and a seek reads one page.
    #[test]
    fn the_index_writes_small_leaf_pages() {
        let mut c = Connection::open_in_memory().expect("open");
        crate::store::rank::register(&c).expect("rank");
        crate::store::migrations::apply(&mut c).expect("migrate");
        let pgsz: i64 = c
            .query_row(
                "SELECT v FROM messages_fts_config WHERE k = 'pgsz'",
                [],
                |r| r.get(0),
            )
            .expect("pgsz");
        assert_eq!(pgsz, 1000);
        // "common" in 2,000 messages: a doclist of several KB.
        for i in 0..400 {
            append(&mut c, "s1", &batch(i)).expect("append");
        }
        while merge_step(&c).expect("step") {}
        // Records past id 10 are leaf pages (FTS5's structure and
        // averages records have ids 1 and 10); FTS5 fills a page to about
        // `pgsz` and may end it one entry past.
        let (largest, pages): (i64, i64) = c
            .query_row(
                "SELECT max(length(block)), count(*) FROM messages_fts_data WHERE id > 10",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("pages");
        assert!(pages > 10, "{pages} pages");
        assert!(largest < 1_500, "a leaf page of {largest} bytes");
        assert_eq!(hits(&c, "common").len(), 100);
    }
}
