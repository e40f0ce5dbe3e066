//! Full-text search over message content (FTS5), best match or newest
//! first, with snippets.
//!
//! The cost of a search is the FTS5 ranking loop: a score for every match
//! before `LIMIT` keeps a page (`store::rank`'s bm25, which skips the
//! length lookup of a match that cannot make the page). Anything added to that loop is paid once per
//! *match* (72,000 times for a common word at a million messages), so the
//! plans below keep it to the FTS5 table alone whenever they can and touch
//! `messages` only for the page they return; a filter is checked in the
//! covering index `messages_search_facets`, never in the message row. See
//! BENCHMARKS.md ("Search at a million messages") for the figures against
//! FTS5 alone.

use rusqlite::Connection;
use serde::Serialize;

use super::conversations::{Page, Role};
use super::{StoreError, StoreResult, cursor, ms_to_rfc3339};

/// Order of the hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SearchSort {
    /// Best bm25 score first (ties: older message first).
    #[default]
    Relevance,
    /// Most recently stored message first (message id descending). FTS5
    /// walks its index in that order, so a common word stops after one
    /// page instead of ranking every match. No score: bm25 reads the whole
    /// doclist of every term once per query (55 ms for a word in 880,000
    /// of a million messages, against 0.06 ms for the page itself).
    Recent,
}

impl SearchSort {
    pub fn parse(s: &str) -> Option<SearchSort> {
        match s {
            "relevance" => Some(SearchSort::Relevance),
            "recent" => Some(SearchSort::Recent),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    pub query: String,
    /// Quote every word instead of reading FTS5 syntax.
    pub plain: bool,
    pub platform: Option<String>,
    pub role: Option<Role>,
    pub session_id: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub sort: SearchSort,
    pub limit: u32,
    pub cursor: Option<String>,
}

impl SearchFilter {
    fn has_filter(&self) -> bool {
        self.platform.is_some()
            || self.role.is_some()
            || self.session_id.is_some()
            || self.since_ms.is_some()
            || self.until_ms.is_some()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub message_id: i64,
    pub session_id: String,
    pub platform: String,
    pub role: String,
    /// HTML-escaped excerpt with `<mark>` around the matched terms.
    pub snippet: String,
    pub created_at: String,
    /// bm25 score: lower is a better match. `None` (null) with
    /// [`SearchSort::Recent`].
    pub score: Option<f64>,
}

/// Turn free text into an FTS5 query that matches every word literally.
pub fn plain_query(text: &str) -> String {
    text.split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// SQLite reports a bad MATCH expression as a plain `SQLITE_ERROR` while
/// stepping an already-prepared statement (busy, corrupt and I/O failures
/// have codes of their own): recognise it so the client gets a 400, not a
/// 500. Call only on errors of executing a prepared search.
pub fn classify_fts_error(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        if f.extended_code == rusqlite::ffi::SQLITE_ERROR {
            let msg = msg.as_deref().unwrap_or("syntax error");
            return StoreError::InvalidQuery(msg.trim_start_matches("fts5: ").to_owned());
        }
    }
    StoreError::from(e)
}

const MARK_OPEN: char = '\u{1}';
const MARK_CLOSE: char = '\u{2}';

/// Escape a snippet for HTML and turn the private markers into `<mark>`.
pub fn render_snippet(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        match c {
            MARK_OPEN => out.push_str("<mark>"),
            MARK_CLOSE => out.push_str("</mark>"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Every plan is two steps: `top` picks one page of `(id, score)`, then
/// the page alone is joined to `messages` and gets its `snippet()` (which
/// re-tokenizes a whole message, so it must never run per match).
/// `CROSS JOIN` fixes the join order (SQLite does not reorder it). All
/// plans take the same parameters: ?1 MATCH expression, ?2 platform, ?3
/// role, ?4 since (ms, inclusive), ?5 until (ms, exclusive), ?6 session, ?7
/// rows to return, ?8 offset (relevance) or the id to continue below
/// (recent); a plan ignores what it does not use.
///
/// `snippet()` needs an FTS5 cursor on the MATCH. [`page_of`] opens one per
/// page row (a seek in each term's doclist in every segment of the index,
/// which is why `search_index` keeps it to one segment; cheap for words,
/// but a prefix query expands its prefix again each time: 21 × 250 ms for
/// a prefix matching 380,000 messages). [`page_scan_of`] walks one cursor
/// over the matches between the page's lowest and highest id and keeps the
/// page's rows: for prefix queries, and for `recent`, whose page is one run
/// of ids.
macro_rules! page_of {
    ($top:expr, $order:expr) => {
        concat!(
            "WITH top AS MATERIALIZED (",
            $top,
            ")
 SELECT m.id, m.session_id, m.platform, m.role, m.created_at,
        snippet(messages_fts, 0, char(1), char(2), '…', 16), top.score
   FROM top
   CROSS JOIN messages m ON m.id = top.id
   CROSS JOIN messages_fts ON messages_fts.rowid = top.id AND messages_fts MATCH ?1
  ORDER BY ",
            $order
        )
    };
}

/// See [`page_of`].
macro_rules! page_scan_of {
    ($top:expr, $order:expr) => {
        concat!(
            "WITH top AS MATERIALIZED (",
            $top,
            "),
 span AS MATERIALIZED (SELECT min(id) AS lo, max(id) AS hi FROM top)
 SELECT m.id, m.session_id, m.platform, m.role, m.created_at,
        snippet(messages_fts, 0, char(1), char(2), '…', 16), top.score
   FROM span
   CROSS JOIN messages_fts
     ON messages_fts MATCH ?1
    AND messages_fts.rowid >= span.lo AND messages_fts.rowid <= span.hi
   CROSS JOIN top ON top.id = messages_fts.rowid
   CROSS JOIN messages m ON m.id = top.id
  ORDER BY ",
            $order
        )
    };
}

/// The filter columns of a match, checked inside the ranking loop when a
/// filter is given (each a no-op when its parameter is NULL). They are read
/// from the covering index `messages_search_facets` (migration 0010, 36
/// bytes a message at a million), never from the message row and its
/// content.
macro_rules! filters {
    () => {
        "AND (?2 IS NULL OR m.platform = ?2)
      AND (?3 IS NULL OR m.role = ?3)
      AND (?4 IS NULL OR m.created_at >= ?4)
      AND (?5 IS NULL OR m.created_at < ?5)
      AND (?6 IS NULL OR m.session_id = ?6)"
    };
}

/// A match joined to its filter columns; `INDEXED BY` makes it an error,
/// not a silent slow plan, if the index were ever missing.
macro_rules! facets {
    () => {
        "messages_fts CROSS JOIN messages m INDEXED BY messages_search_facets
         ON m.id = messages_fts.rowid"
    };
}

/// The ids of the session named by ?6 between its lowest and highest (one
/// seek each in `messages_by_session`; a session without messages gives an
/// empty span): FTS5 then walks only that span of its doclists. Only
/// narrows the walk: the filter still decides. Only in the session plans:
/// a rowid range costs FTS5 about half again on a walk it does not narrow
/// (5.6 against 8.3 ms, a word in 1,700 of a million messages).
macro_rules! session_span {
    () => {
        concat!(
            "AND messages_fts.rowid >= ",
            session_lo!(),
            " AND messages_fts.rowid <= ",
            session_hi!()
        )
    };
}

/// See [`session_span`].
macro_rules! session_lo {
    () => {
        "coalesce((SELECT id FROM messages WHERE session_id = ?6 ORDER BY id LIMIT 1), 1)"
    };
}

/// See [`session_span`].
macro_rules! session_hi {
    () => {
        "coalesce((SELECT id FROM messages WHERE session_id = ?6 ORDER BY id DESC LIMIT 1), 0)"
    };
}

/// Relevance, no filter (the common case): bm25 ranked inside the FTS5
/// table alone, the statement the benchmark calls the limit, with
/// `tenantd_rank` (the same scores, `k` = `LIMIT + OFFSET`) for `bm25()`.
macro_rules! top_relevance {
    () => {
        "SELECT rowid AS id, tenantd_rank(messages_fts, ?7 + ?8) AS score
       FROM messages_fts
      WHERE messages_fts MATCH ?1
      ORDER BY score, id
      LIMIT ?7 OFFSET ?8"
    };
}

/// Relevance with a filter: the join to the filter columns is inside the
/// ranking loop, but reads a small index entry, and only for a match that
/// `tenantd_rank`'s screen (third argument `store::rank::SCREEN`, a term on
/// `messages_fts` alone, so SQLite checks it before the join) says can
/// still make the page; `$span` narrows the walk (a session's span, or
/// nothing).
macro_rules! top_relevance_filtered {
    ($span:expr) => {
        concat!(
            "SELECT m.id AS id, tenantd_rank(messages_fts, ?7 + ?8) AS score
       FROM ",
            facets!(),
            "
      WHERE messages_fts MATCH ?1 AND tenantd_rank(messages_fts, ?7 + ?8, 1) ",
            $span,
            " ",
            filters!(),
            "
      ORDER BY score, m.id
      LIMIT ?7 OFFSET ?8"
        )
    };
}

/// Newest first with a filter: the walk down from `$below` (an id,
/// excluded), each match checked against its filter columns until a page
/// is full; `$span` narrows it from below. One upper bound only: FTS5 takes
/// the first it is given.
macro_rules! top_recent_filtered {
    ($below:expr, $span:expr) => {
        concat!(
            "SELECT m.id AS id, NULL AS score
       FROM ",
            facets!(),
            "
      WHERE messages_fts MATCH ?1 AND messages_fts.rowid < ",
            $below,
            " ",
            $span,
            " ",
            filters!(),
            "
      ORDER BY messages_fts.rowid DESC
      LIMIT ?7"
        )
    };
}

/// Relevance, no filter, word queries. Shared with the benchmark so it
/// measures what the API runs.
pub const SEARCH_SQL: &str = page_of!(top_relevance!(), "top.score, top.id");
/// Relevance, no filter, prefix queries.
pub const SEARCH_PREFIX_SQL: &str = page_scan_of!(top_relevance!(), "top.score, top.id");
/// Relevance with a filter but no session, word queries.
pub const SEARCH_FILTERED_SQL: &str = page_of!(top_relevance_filtered!(""), "top.score, top.id");
/// Relevance with a filter but no session, prefix queries.
pub const SEARCH_FILTERED_PREFIX_SQL: &str =
    page_scan_of!(top_relevance_filtered!(""), "top.score, top.id");
/// Relevance within a session (other filters too), word queries.
pub const SEARCH_SESSION_SQL: &str = page_of!(
    top_relevance_filtered!(session_span!()),
    "top.score, top.id"
);
/// Relevance within a session (other filters too), prefix queries.
pub const SEARCH_SESSION_PREFIX_SQL: &str = page_scan_of!(
    top_relevance_filtered!(session_span!()),
    "top.score, top.id"
);

/// Newest first, no filter: FTS5 walks its doclists by rowid descending
/// from the cursor and stops after one page.
pub const SEARCH_RECENT_SQL: &str = page_scan_of!(
    "SELECT rowid AS id, NULL AS score
       FROM messages_fts
      WHERE messages_fts MATCH ?1 AND rowid < ?8
      ORDER BY rowid DESC
      LIMIT ?7",
    "top.id DESC"
);

/// Newest first with a filter but no session.
pub const SEARCH_RECENT_FILTERED_SQL: &str =
    page_scan_of!(top_recent_filtered!("?8", ""), "top.id DESC");
/// Newest first within a session (other filters too).
/// The walk starts below the cursor or past the session's last id,
/// whichever is lower.
pub const SEARCH_RECENT_SESSION_SQL: &str = page_scan_of!(
    top_recent_filtered!(
        concat!("min(?8, ", session_hi!(), " + 1)"),
        concat!("AND messages_fts.rowid >= ", session_lo!())
    ),
    "top.id DESC"
);

/// Whether a MATCH expression may hold a prefix query (`word*`). Plain
/// mode quotes every word, so a `*` there is text. Only picks a plan: both
/// return the same rows.
fn may_have_prefix(f: &SearchFilter) -> bool {
    !f.plain && f.query.contains('*')
}

/// The statement every search ran before the plans above (every match
/// joined to its message row inside the ranking loop): the reference their
/// results must equal, hit for hit, snippet for snippet (the tests), and the
/// "before" of the benchmark. Same parameters as the plans.
#[doc(hidden)]
pub const REFERENCE_SQL: &str = "WITH top AS MATERIALIZED (
   SELECT m.id AS id, bm25(messages_fts) AS score
     FROM messages_fts CROSS JOIN messages m ON m.id = messages_fts.rowid
    WHERE messages_fts MATCH ?1
      AND (?2 IS NULL OR m.platform = ?2)
      AND (?3 IS NULL OR m.role = ?3)
      AND (?4 IS NULL OR m.created_at >= ?4)
      AND (?5 IS NULL OR m.created_at < ?5)
      AND (?6 IS NULL OR m.session_id = ?6)
    ORDER BY score, m.id
    LIMIT ?7 OFFSET ?8)
 SELECT m.id, m.session_id, m.platform, m.role, m.created_at,
        snippet(messages_fts, 0, char(1), char(2), '…', 16), top.score
   FROM top
   CROSS JOIN messages m ON m.id = top.id
   CROSS JOIN messages_fts ON messages_fts.rowid = top.id AND messages_fts MATCH ?1
  ORDER BY top.score, top.id";

/// How many messages a search matches, its filters included (the
/// benchmark's "matches"; ?1–?6 as in the plans).
#[doc(hidden)]
pub const MATCH_COUNT_SQL: &str = concat!(
    "SELECT count(*) FROM ",
    facets!(),
    " WHERE messages_fts MATCH ?1 ",
    filters!()
);

/// The statement for a search.
pub fn plan(f: &SearchFilter) -> &'static str {
    let session = f.session_id.is_some();
    match (f.sort, f.has_filter(), session, may_have_prefix(f)) {
        (SearchSort::Relevance, false, _, false) => SEARCH_SQL,
        (SearchSort::Relevance, false, _, true) => SEARCH_PREFIX_SQL,
        (SearchSort::Relevance, true, false, false) => SEARCH_FILTERED_SQL,
        (SearchSort::Relevance, true, false, true) => SEARCH_FILTERED_PREFIX_SQL,
        (SearchSort::Relevance, true, true, false) => SEARCH_SESSION_SQL,
        (SearchSort::Relevance, true, true, true) => SEARCH_SESSION_PREFIX_SQL,
        (SearchSort::Recent, false, _, _) => SEARCH_RECENT_SQL,
        (SearchSort::Recent, true, false, _) => SEARCH_RECENT_FILTERED_SQL,
        (SearchSort::Recent, true, true, _) => SEARCH_RECENT_SESSION_SQL,
    }
}

/// The parameters of every plan, in order (see [`page_of`]).
fn parameters<'a>(
    query: &'a str,
    f: &'a SearchFilter,
    position: i64,
) -> impl rusqlite::Params + 'a {
    (
        query,
        f.platform.as_deref(),
        f.role.map(Role::as_str),
        f.since_ms,
        f.until_ms,
        f.session_id.as_deref(),
        f.limit as i64 + 1,
        position,
    )
}

/// Full-text search over message content, best match (or newest) first.
///
/// Cursors: relevance pages are offsets into the ranking; recent pages are
/// the last id returned (a keyset, so a page never repeats or skips a
/// message stored meanwhile).
pub fn search(conn: &Connection, f: &SearchFilter) -> StoreResult<Page<SearchHit>> {
    let query = if f.plain {
        plain_query(&f.query)
    } else {
        f.query.clone()
    };
    if query.trim().is_empty() {
        return Err(StoreError::Invalid("`q` must not be empty".into()));
    }
    let sql = plan(f);
    let position = match f.sort {
        SearchSort::Relevance => cursor::int(f.cursor.as_deref(), 0)?,
        SearchSort::Recent => cursor::int(f.cursor.as_deref(), i64::MAX)?,
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(parameters(&query, f, position), |r| {
            Ok(SearchHit {
                message_id: r.get(0)?,
                session_id: r.get(1)?,
                platform: r.get(2)?,
                role: r.get(3)?,
                created_at: ms_to_rfc3339(r.get(4)?),
                snippet: render_snippet(&r.get::<_, String>(5)?),
                score: r.get(6)?,
            })
        })
        .map_err(classify_fts_error)?;
    let mut items = Vec::with_capacity(f.limit as usize + 1);
    for row in rows {
        items.push(row.map_err(classify_fts_error)?);
    }
    Ok(match f.sort {
        SearchSort::Relevance => {
            cursor::page(items, f.limit, |_| (position + f.limit as i64).to_string())
        }
        SearchSort::Recent => cursor::page(items, f.limit, |last| last.message_id.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conversations::{AppendMessages, NewMessage, TimeInput, append};

    #[test]
    fn snippet_is_escaped_and_marked() {
        assert_eq!(
            render_snippet("a <b> \u{1}hit\u{2} & 'c'"),
            "a &lt;b&gt; <mark>hit</mark> &amp; &#39;c&#39;"
        );
    }

    #[test]
    fn plain_query_quotes_words() {
        assert_eq!(plain_query(r#"foo-bar "x"#), r#""foo-bar" """x""#);
    }

    #[test]
    fn every_bad_fts_query_is_an_invalid_query() {
        let mut c = Connection::open_in_memory().expect("open");
        crate::store::rank::register(&c).expect("rank");
        crate::store::migrations::apply(&mut c).expect("migrate");
        for sort in [SearchSort::Relevance, SearchSort::Recent] {
            for (platform, session_id) in [
                (None, None),
                (Some("web".to_owned()), None),
                (None, Some("s".to_owned())),
            ] {
                for bad in [
                    "\"unterminated",
                    "AND",
                    "foo AND",
                    "(foo",
                    "nosuchcol:foo",
                    "NEAR(",
                    "*",
                    "a:b:c",
                    "^",
                    "-x",
                ] {
                    let f = SearchFilter {
                        query: bad.into(),
                        platform: platform.clone(),
                        session_id: session_id.clone(),
                        sort,
                        limit: 10,
                        ..Default::default()
                    };
                    match search(&c, &f) {
                        Err(StoreError::InvalidQuery(_)) => {}
                        other => panic!("{bad} {sort:?} {platform:?} {session_id:?}: {other:?}"),
                    }
                }
            }
        }
    }

    fn reference(c: &Connection, f: &SearchFilter, offset: i64) -> Vec<(i64, String, f64)> {
        let mut stmt = c.prepare(REFERENCE_SQL).expect("prepare");
        stmt.query_map(parameters(&f.query, f, offset), |r| {
            Ok((
                r.get(0)?,
                render_snippet(&r.get::<_, String>(5)?),
                r.get(6)?,
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    /// A small corpus with ties (identical messages), several sessions,
    /// platforms, roles and times.
    fn corpus() -> Connection {
        let mut c = Connection::open_in_memory().expect("open");
        crate::store::rank::register(&c).expect("rank");
        crate::store::migrations::apply(&mut c).expect("migrate");
        fill(&mut c);
        c
    }

    fn fill(c: &mut Connection) {
        let words = ["alpha", "beta", "gamma", "delta", "<b>", "o'neil", "zeta"];
        for s in 0..6 {
            let messages = (0..40)
                .map(|i: usize| NewMessage {
                    role: if i % 3 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    content: (0..(i % 7 + 1))
                        .map(|k| words[(i * 5 + k * 3 + s) % words.len()])
                        .collect::<Vec<_>>()
                        .join(" "),
                    tool_calls: None,
                    tokens_used: None,
                    created_at: Some(TimeInput::Seconds(1_700_000_000.0 + (i * 7 + s) as f64)),
                    external_id: None,
                })
                .collect();
            let req = AppendMessages {
                platform: Some(["web", "telegram"][s % 2].into()),
                title: None,
                messages,
            };
            append(c, &format!("s{s}"), &req).expect("append");
        }
        // A session whose ids span the others' (its span holds matches of
        // every session).
        let req = AppendMessages {
            platform: Some("web".into()),
            title: None,
            messages: vec![NewMessage {
                role: Role::User,
                content: "alpha beta del delta zeta".into(),
                tool_calls: None,
                tokens_used: None,
                created_at: Some(TimeInput::Seconds(1_700_000_100.0)),
                external_id: None,
            }],
        };
        append(c, "s0", &req).expect("append");
    }

    fn filters() -> Vec<SearchFilter> {
        let base = SearchFilter {
            limit: 7,
            ..Default::default()
        };
        let mut out = Vec::new();
        for query in [
            "alpha",
            "beta gamma",
            "del*",
            "\"o'neil\"",
            "alpha OR zeta",
            "nothing",
        ] {
            let q = SearchFilter {
                query: query.into(),
                ..base.clone()
            };
            out.push(q.clone());
            out.push(SearchFilter {
                platform: Some("telegram".into()),
                ..q.clone()
            });
            out.push(SearchFilter {
                role: Some(Role::User),
                session_id: Some("s2".into()),
                ..q.clone()
            });
            out.push(SearchFilter {
                session_id: Some("s0".into()),
                ..q.clone()
            });
            out.push(SearchFilter {
                session_id: Some("no-such-session".into()),
                ..q.clone()
            });
            out.push(SearchFilter {
                since_ms: Some(1_700_000_050_000),
                until_ms: Some(1_700_000_200_000),
                ..q.clone()
            });
        }
        out
    }

    /// Every page of every plan, relevance order: the same hits, scores
    /// and snippets as the reference query at the same offset.
    #[test]
    fn relevance_plans_return_what_the_reference_query_returns() {
        assert_relevance_matches_reference(&corpus());
    }

    /// A store written by the previous schema (0009, no facets index) and
    /// then upgraded searches exactly as one created at 0010.
    #[test]
    fn an_upgraded_store_searches_as_a_new_one() {
        let mut c = Connection::open_in_memory().expect("open");
        crate::store::rank::register(&c).expect("rank");
        let before = crate::store::migrations::MIGRATIONS.len() - 1;
        for (version, (_, sql)) in crate::store::migrations::MIGRATIONS[..before]
            .iter()
            .enumerate()
        {
            c.execute_batch(sql).expect("old migration");
            c.pragma_update(None, "user_version", version as i64 + 1)
                .expect("version");
        }
        fill(&mut c);
        assert_eq!(
            crate::store::migrations::apply(&mut c).expect("upgrade"),
            crate::store::migrations::latest()
        );
        let entries: i64 = c
            .query_row(
                "SELECT count(*) FROM messages INDEXED BY messages_search_facets",
                [],
                |r| r.get(0),
            )
            .expect("index");
        assert_eq!(entries, 241);
        assert_relevance_matches_reference(&c);
        assert_recent_matches_reference(&c);
    }

    fn assert_relevance_matches_reference(c: &Connection) {
        let mut later_pages = 0;
        for f in filters() {
            let mut offset = 0;
            let mut f = f.clone();
            loop {
                let page = search(c, &f).expect("search");
                let want = reference(c, &f, offset);
                let got: Vec<(i64, String, f64)> = page
                    .items
                    .iter()
                    .map(|h| (h.message_id, h.snippet.clone(), h.score.expect("score")))
                    .collect();
                assert_eq!(got, want[..want.len().min(7)].to_vec(), "{f:?} at {offset}");
                match page.next_cursor {
                    Some(next) => {
                        f.cursor = Some(next);
                        offset += 7;
                        later_pages += 1;
                    }
                    None => break,
                }
            }
        }
        assert!(later_pages > 20, "the corpus must page: {later_pages}");
    }

    /// Recent order: the reference's hit set, newest id first, across
    /// pages, with the same snippets, and no score.
    #[test]
    fn recent_returns_every_hit_newest_first() {
        assert_recent_matches_reference(&corpus());
    }

    fn assert_recent_matches_reference(c: &Connection) {
        for f in filters() {
            let everything = SearchFilter {
                limit: 10_000,
                ..f.clone()
            };
            let mut want: Vec<(i64, String)> = reference(c, &everything, 0)
                .into_iter()
                .map(|(id, snippet, _)| (id, snippet))
                .collect();
            want.sort_by_key(|h| std::cmp::Reverse(h.0));
            let count: i64 = c
                .query_row(
                    MATCH_COUNT_SQL,
                    rusqlite::params![
                        f.query,
                        f.platform,
                        f.role.map(Role::as_str),
                        f.since_ms,
                        f.until_ms,
                        f.session_id
                    ],
                    |r| r.get(0),
                )
                .expect("count");
            assert_eq!(count as usize, want.len(), "{f:?}");
            let mut got = Vec::new();
            let mut f = SearchFilter {
                sort: SearchSort::Recent,
                ..f
            };
            loop {
                let page = search(c, &f).expect("search");
                assert!(page.items.len() <= 7);
                assert!(page.items.iter().all(|h| h.score.is_none()));
                got.extend(page.items.iter().map(|h| (h.message_id, h.snippet.clone())));
                match page.next_cursor {
                    Some(next) => f.cursor = Some(next),
                    None => break,
                }
            }
            assert_eq!(got, want, "{f:?}");
        }
    }
}
