//! `tenantd_rank(messages_fts, k)`: FTS5's `bm25()` for a query that keeps
//! only its `k` best matches, skipping the work for a match that cannot be
//! among them.
//!
//! bm25 needs each match's length in tokens, which FTS5 reads from its
//! `%_docsize` table: one b-tree seek a match, the larger part of ranking a
//! word at a million messages (a `perf` of the limit: the seeks ~30 %, the
//! page decoding behind them ~15 %). The score only worsens as the length
//! grows, and the match's own phrase positions bound the length from below
//! (a phrase at token `i` of `n` tokens means the row has at least `i + n`).
//! So once `k` scores are kept, a match whose score at that least length is
//! still worse than the `k`-th kept cannot enter the top `k`: it gets
//! `+inf` without the seek. Every other match gets exactly the value
//! `bm25()` gives (same formula, same operations in the same order as
//! SQLite's `fts5Bm25Function`, so the same bits), which is what the tests
//! check against `bm25()` on every page of every plan.
//!
//! Why the order is unchanged: the threshold (the `k`-th best score kept so
//! far) only improves, so a match skipped against it is strictly worse than
//! `k` matches of the final top `k`; ties are never skipped (strictly worse
//! only), so the `id` tie-break sees every candidate. `k` is the statement's
//! `LIMIT + OFFSET`; beyond [`MAX_KEPT`] (a client's deep cursor) nothing is
//! skipped, so the state stays small. A filtered plan also calls it as a
//! screen ([`SCREEN`]) in its `WHERE`, so a match that cannot make the page
//! is dropped before its filter columns are read.

use std::cell::Cell;
use std::collections::BinaryHeap;
use std::ffi::{c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use rusqlite::Connection;
use rusqlite::ffi;

/// Deepest `LIMIT + OFFSET` that is pruned: past it the function is plain
/// bm25 (the kept scores would cost 8 bytes each).
const MAX_KEPT: i64 = 10_000;

/// The third argument that asks only whether the current match can still
/// make the best `k` (1) or not (0), for a `WHERE` term: a filtered plan
/// screens each match before it reads the match's filter columns, and
/// scores (third argument absent) only the matches that pass the filter.
/// Both calls share the query's state (one function, one cursor).
pub const SCREEN: i64 = 1;

/// bm25's constants, as in SQLite's `fts5Bm25Function`.
const K1: f64 = 1.2;
const B: f64 = 0.75;

thread_local! {
    /// Matches this thread skipped (no length read), for the tests: the
    /// function runs on the thread that steps the statement.
    static SKIPPED: Cell<u64> = const { Cell::new(0) };
}

/// How many matches the statements stepped on this thread have skipped.
pub fn skipped_on_this_thread() -> u64 {
    SKIPPED.with(Cell::get)
}

/// Make `tenantd_rank` available on `conn` (every connection the store
/// opens; a connection without it fails a search with "no such function").
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    // SAFETY: the documented way to reach FTS5's API (SQLite's fts5.h,
    // "Extension API"): `SELECT fts5(?1)` with a pointer bound under the
    // type "fts5_api_ptr" writes the API into it. The statement is
    // finalized on every path; `db` outlives this call.
    unsafe {
        let db = conn.handle();
        let mut api: *mut ffi::fts5_api = ptr::null_mut();
        let mut stmt: *mut ffi::sqlite3_stmt = ptr::null_mut();
        let rc = ffi::sqlite3_prepare_v2(
            db,
            c"SELECT fts5(?1)".as_ptr(),
            -1,
            &mut stmt,
            ptr::null_mut(),
        );
        if rc != ffi::SQLITE_OK {
            ffi::sqlite3_finalize(stmt);
            return Err(failure(rc, "FTS5 is not available"));
        }
        ffi::sqlite3_bind_pointer(
            stmt,
            1,
            (&mut api as *mut *mut ffi::fts5_api).cast::<c_void>(),
            c"fts5_api_ptr".as_ptr(),
            None,
        );
        ffi::sqlite3_step(stmt);
        ffi::sqlite3_finalize(stmt);
        let Some(create) = api.as_ref().and_then(|a| a.xCreateFunction) else {
            return Err(failure(ffi::SQLITE_ERROR, "FTS5 gave no extension API"));
        };
        let rc = create(
            api,
            c"tenantd_rank".as_ptr(),
            ptr::null_mut(),
            Some(rank),
            None,
        );
        if rc != ffi::SQLITE_OK {
            return Err(failure(rc, "could not register tenantd_rank"));
        }
    }
    Ok(())
}

fn failure(rc: c_int, what: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), Some(what.to_owned()))
}

/// A score kept among the best `k`; the heap's top is the worst kept.
#[derive(PartialEq)]
struct Kept(f64);

impl Eq for Kept {}

impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Kept {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// What one query computes once (FTS5 keeps it with the cursor and frees
/// it when the cursor is reset or closed).
struct Query {
    /// Matches kept at most (0: none skipped).
    k: usize,
    idf: Vec<f64>,
    avgdl: f64,
    /// Scratch: phrase frequencies of the current match.
    freq: Vec<f64>,
    kept: BinaryHeap<Kept>,
    /// The last match scored, and its score: SQLite may evaluate the
    /// function twice for one row, which must not keep it twice.
    last: Option<(i64, f64)>,
    /// The last match screened (`SCREEN`), and its least length.
    screened: Option<(i64, i64)>,
}

impl Query {
    /// bm25 of the current frequencies at length `d`, operation for
    /// operation as SQLite's `fts5Bm25Function`.
    fn score(&self, d: f64) -> f64 {
        let mut score = 0.0;
        for (idf, f) in self.idf.iter().zip(&self.freq) {
            score += idf * ((f * (K1 + 1.0)) / (f + K1 * (1.0 - B + B * d / self.avgdl)));
        }
        -score
    }

    /// Keep `score` if it is among the best `k` so far.
    fn keep(&mut self, score: f64) {
        if self.k == 0 {
            return;
        }
        if self.kept.len() < self.k {
            self.kept.push(Kept(score));
        } else if self.kept.peek().is_some_and(|worst| score < worst.0) {
            self.kept.pop();
            self.kept.push(Kept(score));
        }
    }

    /// Whether a match whose best possible score is `bound` cannot enter
    /// the best `k`.
    fn cannot_enter(&self, bound: f64) -> bool {
        self.k > 0 && self.kept.len() == self.k && self.kept.peek().is_some_and(|w| bound > w.0)
    }
}

unsafe extern "C" fn drop_query(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: `p` is the `Box<Query>` `query` handed to xSetAuxdata,
        // which calls this once.
        drop(unsafe { Box::from_raw(p.cast::<Query>()) });
    }
}

unsafe extern "C" fn count_match(
    _api: *const ffi::Fts5ExtensionApi,
    _fts: *mut ffi::Fts5Context,
    n: *mut c_void,
) -> c_int {
    // SAFETY: `n` is the `i64` `query` passes to xQueryPhrase.
    unsafe { *n.cast::<i64>() += 1 };
    ffi::SQLITE_OK
}

/// The auxiliary function. Errors go back to SQLite as its error code; a
/// panic (none is expected) as SQLITE_INTERNAL, never across the FFI edge.
unsafe extern "C" fn rank(
    api: *const ffi::Fts5ExtensionApi,
    fts: *mut ffi::Fts5Context,
    ctx: *mut ffi::sqlite3_context,
    n_val: c_int,
    args: *mut *mut ffi::sqlite3_value,
) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: SQLite passes a valid API and context for the current
        // row, and `n_val` values in `args`.
        unsafe { score_row(&*api, fts, n_val, args) }
    }));
    // SAFETY: `ctx` is this call's result context.
    unsafe {
        match result {
            Ok(Ok(score)) => ffi::sqlite3_result_double(ctx, score),
            Ok(Err(rc)) => ffi::sqlite3_result_error_code(ctx, rc),
            Err(_) => ffi::sqlite3_result_error_code(ctx, ffi::SQLITE_INTERNAL),
        }
    }
}

/// Turn an FTS5 API return code into a `Result`.
fn ok(rc: c_int) -> Result<(), c_int> {
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rc)
    }
}

/// A missing API entry (an FTS5 older than the bundled one).
const MISSING: c_int = ffi::SQLITE_MISUSE;

/// # Safety
/// `api` and `fts` as SQLite passes them to an auxiliary function.
unsafe fn query<'a>(
    api: &ffi::Fts5ExtensionApi,
    fts: *mut ffi::Fts5Context,
    n_val: c_int,
    args: *mut *mut ffi::sqlite3_value,
) -> Result<&'a mut Query, c_int> {
    let get = api.xGetAuxdata.ok_or(MISSING)?;
    // SAFETY: the pointer is null or the `Query` set below.
    if let Some(q) = unsafe { get(fts, 0).cast::<Query>().as_mut() } {
        return Ok(q);
    }
    let k = if n_val >= 1 {
        // SAFETY: `args` holds `n_val` values.
        unsafe { ffi::sqlite3_value_int64(*args) }
    } else {
        0
    };
    let k = if (1..=MAX_KEPT).contains(&k) {
        k as usize
    } else {
        0
    };
    let phrases = unsafe { api.xPhraseCount.ok_or(MISSING)?(fts) }.max(0) as usize;
    let (mut rows, mut tokens) = (0_i64, 0_i64);
    ok(unsafe { api.xRowCount.ok_or(MISSING)?(fts, &mut rows) })?;
    ok(unsafe { api.xColumnTotalSize.ok_or(MISSING)?(fts, -1, &mut tokens) })?;
    let avgdl = tokens as f64 / rows as f64;
    let query_phrase = api.xQueryPhrase.ok_or(MISSING)?;
    let mut idf = Vec::with_capacity(phrases);
    for i in 0..phrases {
        let mut hits = 0_i64;
        ok(unsafe {
            query_phrase(
                fts,
                i as c_int,
                (&mut hits as *mut i64).cast::<c_void>(),
                Some(count_match),
            )
        })?;
        // As SQLite's bm25: never a negative IDF.
        let v = (((rows - hits) as f64 + 0.5) / (hits as f64 + 0.5)).ln();
        idf.push(if v <= 0.0 { 1e-6 } else { v });
    }
    let set = api.xSetAuxdata.ok_or(MISSING)?;
    let q = Box::into_raw(Box::new(Query {
        k,
        idf,
        avgdl,
        freq: vec![0.0; phrases],
        kept: BinaryHeap::with_capacity(k.min(64)),
        last: None,
        screened: None,
    }));
    // SAFETY: FTS5 owns `q` from here (frees it with `drop_query`, also
    // when it fails to store it).
    ok(unsafe { set(fts, q.cast::<c_void>(), Some(drop_query)) })?;
    // SAFETY: stored; alive until the cursor is reset, after this call.
    Ok(unsafe { &mut *q })
}

/// # Safety
/// As [`query`].
unsafe fn score_row(
    api: &ffi::Fts5ExtensionApi,
    fts: *mut ffi::Fts5Context,
    n_val: c_int,
    args: *mut *mut ffi::sqlite3_value,
) -> Result<f64, c_int> {
    let q = unsafe { query(api, fts, n_val, args) }?;
    let screen = n_val >= 2 && {
        // SAFETY: `args` holds `n_val` values.
        unsafe { ffi::sqlite3_value_int64(*args.add(1)) == SCREEN }
    };
    let rowid = unsafe { api.xRowid.ok_or(MISSING)?(fts) };
    if let Some((id, score)) = q.last {
        if id == rowid && !screen {
            return Ok(score);
        }
    }
    let least = match q.screened {
        // Screened just before: the frequencies are still this row's.
        Some((id, least)) if id == rowid => least,
        _ => unsafe { frequencies(q, api, fts) }?,
    };
    let cannot_enter = q.cannot_enter(q.score(least as f64));
    if screen {
        q.screened = Some((rowid, least));
        if cannot_enter {
            SKIPPED.with(|s| s.set(s.get() + 1));
        }
        return Ok(if cannot_enter { 0.0 } else { 1.0 });
    }
    let score = if cannot_enter {
        SKIPPED.with(|s| s.set(s.get() + 1));
        f64::INFINITY
    } else {
        let mut tokens: c_int = 0;
        ok(unsafe { api.xColumnSize.ok_or(MISSING)?(fts, -1, &mut tokens) })?;
        let score = q.score(f64::from(tokens));
        q.keep(score);
        score
    };
    q.last = Some((rowid, score));
    Ok(score)
}

/// Fill `q.freq` with the current row's phrase frequencies (as bm25()
/// counts them) and return the row's least possible length in tokens:
/// past its last phrase instance.
///
/// # Safety
/// As [`query`].
unsafe fn frequencies(
    q: &mut Query,
    api: &ffi::Fts5ExtensionApi,
    fts: *mut ffi::Fts5Context,
) -> Result<i64, c_int> {
    q.freq.fill(0.0);
    let mut instances: c_int = 0;
    ok(unsafe { api.xInstCount.ok_or(MISSING)?(fts, &mut instances) })?;
    let inst = api.xInst.ok_or(MISSING)?;
    let phrase_size = api.xPhraseSize.ok_or(MISSING)?;
    let mut least: i64 = 0;
    for i in 0..instances {
        let (mut phrase, mut column, mut offset): (c_int, c_int, c_int) = (0, 0, 0);
        ok(unsafe { inst(fts, i, &mut phrase, &mut column, &mut offset) })?;
        let Some(f) = usize::try_from(phrase).ok().and_then(|p| q.freq.get_mut(p)) else {
            return Err(ffi::SQLITE_CORRUPT);
        };
        // bm25() without weights: each instance counts 1.0.
        *f += 1.0;
        let size = unsafe { phrase_size(fts, phrase) };
        least = least.max(i64::from(offset) + i64::from(size));
    }
    Ok(least)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 600 rows of 1–60 words; "alpha" in every third, at varying places
    /// and counts; "beta" in every fifth.
    fn table() -> Connection {
        let c = Connection::open_in_memory().expect("open");
        register(&c).expect("register");
        c.execute_batch("CREATE VIRTUAL TABLE t USING fts5(content)")
            .expect("table");
        let mut insert = c
            .prepare("INSERT INTO t(content) VALUES (?1)")
            .expect("insert");
        for i in 0..600_usize {
            let len = 1 + (i * 37) % 60;
            let words: Vec<&str> = (0..len)
                .map(|k| match (i % 3, i % 5, k) {
                    (0, _, k) if k == (i * 7) % len || (i % 4 == 0 && k == len - 1) => "alpha",
                    (_, 0, k) if k == (i * 11) % len => "beta",
                    _ => ["gamma", "delta", "zeta", "eta"][(i + k) % 4],
                })
                .collect();
            insert.execute([words.join(" ")]).expect("row");
        }
        drop(insert);
        c
    }

    fn ranked(
        c: &Connection,
        score: &str,
        query: &str,
        limit: i64,
        offset: i64,
    ) -> Vec<(i64, f64)> {
        let sql = format!(
            "SELECT rowid, {score} AS s FROM t WHERE t MATCH ?1 ORDER BY s, rowid LIMIT ?2 OFFSET ?3"
        );
        let mut stmt = c.prepare(&sql).expect("prepare");
        stmt.query_map((query, limit, offset), |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// Every page, every query shape: the same rows and the same score bits
    /// as bm25(), and matches were skipped (the test fails if pruning is
    /// off or wrong).
    #[test]
    fn the_best_k_equal_bm25_and_matches_are_skipped() {
        let c = table();
        let before = skipped_on_this_thread();
        for query in [
            "alpha",
            "alpha beta",
            "alpha OR beta",
            "\"gamma delta\"",
            "alp*",
            "alpha NOT beta",
        ] {
            for (limit, offset) in [(1, 0), (5, 0), (8, 8), (21, 40), (50, 150), (10, 1000)] {
                let want = ranked(&c, "bm25(t)", query, limit, offset);
                let got = ranked(&c, "tenantd_rank(t, ?2 + ?3)", query, limit, offset);
                assert_eq!(got, want, "{query} limit {limit} offset {offset}");
            }
        }
        assert!(
            skipped_on_this_thread() - before > 1000,
            "skipped {}",
            skipped_on_this_thread() - before
        );
    }

    /// A deep page (past MAX_KEPT) or no k: plain bm25, nothing skipped.
    #[test]
    fn without_a_small_k_nothing_is_skipped() {
        let c = table();
        let before = skipped_on_this_thread();
        for k in ["?2 + ?3 + 20000", "0", "-5", "NULL", "'x'"] {
            let want = ranked(&c, "bm25(t)", "alpha", 10, 0);
            let got = ranked(&c, &format!("tenantd_rank(t, {k})"), "alpha", 10, 0);
            assert_eq!(got, want, "k = {k}");
        }
        assert_eq!(skipped_on_this_thread(), before);
    }

    /// Without a MATCH (a plain scan, no phrase): what bm25() gives.
    #[test]
    fn without_a_match_it_is_bm25() {
        let c = table();
        let sql = "SELECT tenantd_rank(t, 5), bm25(t) FROM t LIMIT 3";
        let mut stmt = c.prepare(sql).expect("prepare");
        let rows: Vec<(f64, f64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(rows.len(), 3);
        for (ours, theirs) in rows {
            assert_eq!(ours.to_bits(), theirs.to_bits());
        }
    }

    /// A filtered plan: the screen (a `WHERE` term on the FTS5 table alone)
    /// rejects a match before its filter row is read, and the page equals
    /// bm25()'s over the matches that pass the filter.
    #[test]
    fn the_screen_runs_before_the_join_and_changes_no_result() {
        let c = table();
        c.execute_batch(
            "CREATE TABLE f(id INTEGER PRIMARY KEY, tag TEXT);
             INSERT INTO f SELECT rowid, CASE rowid % 3 WHEN 0 THEN 'x' ELSE 'y' END FROM t;",
        )
        .expect("filter table");
        let sql = |score: &str, screen: &str| {
            format!(
                "SELECT t.rowid, {score} AS s FROM t CROSS JOIN f ON f.id = t.rowid
                  WHERE t MATCH ?1 {screen} AND f.tag = 'y'
                  ORDER BY s, t.rowid LIMIT ?2 OFFSET ?3"
            )
        };
        let run = |sql: &str, query: &str, limit: i64, offset: i64| {
            let mut stmt = c.prepare(sql).expect("prepare");
            let rows: Vec<(i64, f64)> = stmt
                .query_map((query, limit, offset), |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            (rows, stmt.get_status(rusqlite::StatementStatus::VmStep))
        };
        let before = skipped_on_this_thread();
        let mut steps = (0, 0);
        for query in ["alpha", "alpha OR beta", "gamma"] {
            for (limit, offset) in [(3, 0), (10, 10), (30, 100)] {
                let (want, plain) = run(&sql("bm25(t)", ""), query, limit, offset);
                let (got, screened) = run(
                    &sql(
                        "tenantd_rank(t, ?2 + ?3)",
                        "AND tenantd_rank(t, ?2 + ?3, 1)",
                    ),
                    query,
                    limit,
                    offset,
                );
                assert_eq!(got, want, "{query} limit {limit} offset {offset}");
                steps = (steps.0 + plain, steps.1 + screened);
            }
        }
        assert!(skipped_on_this_thread() - before > 500);
        // Skipped matches never reach the join: fewer VM steps overall.
        assert!(steps.1 * 10 < steps.0 * 8, "steps {steps:?}");
    }
}
