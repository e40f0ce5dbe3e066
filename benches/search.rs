//! Store benchmark: ingest N realistic messages through the API, then
//! measure search latency against its limit, FTS5 alone (the bare ranking
//! statement on a read-only connection), beside the daemon's own SQL run
//! directly and the HTTP round trip, interleaved query by query so the
//! load of a shared machine falls on all three alike; filtered rows also run
//! the statement they replaced (and assert it returns the same hits). Prints
//! p50s and the ratios to the limit. When the index has more segments than
//! the daemon's upkeep allows, runs that upkeep (timing each step) and the
//! table again.
//!
//! `cargo bench --bench search` (N = 1,000,000; `BENCH_MESSAGES=100000` for a
//! quick run; `BENCH_ROWS=rare,uncommon` for the rows whose names start so;
//! `BENCH_PACE=gap|hot|none` for what precedes each timed leg, see [`Pace`]). The corpus is built once through the API into
//! `target/bench-search/<N>/` and reused by later runs (minutes at 1 M);
//! delete that directory to rebuild it (a reused corpus was merged by the
//! run that built it, so only a fresh one shows the table before upkeep).

use std::time::{Duration, Instant};

use hermes_tenantd::store::conversations::Role;
use hermes_tenantd::store::message_search::{
    MATCH_COUNT_SQL, REFERENCE_SQL, SearchFilter, SearchSort, plan,
};
use hermes_tenantd::store::search_index;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod common;
use common::{env_or, spawn_daemon, status_kib, write_private};

const TOKEN: &str = "bench-credential-0123456789abcdef";
const TENANT: &str = "bench";
const BATCH: usize = 1000;

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Anonymous (heap) part of the RSS; the rest is mapped database pages the
/// kernel can drop.
fn anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

/// A vocabulary of pronounceable words; index = frequency rank.
fn vocabulary(n: usize) -> Vec<String> {
    let onsets = [
        "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "tr", "st", "pl",
        "gr",
    ];
    let vowels = ["a", "e", "i", "o", "u", "ai", "ou", "ea"];
    let codas = ["", "n", "r", "s", "t", "l", "nd", "st"];
    let mut rng = StdRng::seed_from_u64(7);
    let mut seen = std::collections::HashSet::new();
    let mut words = Vec::with_capacity(n);
    while words.len() < n {
        let syl = rng.random_range(1..=3);
        let mut w = String::new();
        for _ in 0..syl {
            w.push_str(onsets[rng.random_range(0..onsets.len())]);
            w.push_str(vowels[rng.random_range(0..vowels.len())]);
        }
        w.push_str(codas[rng.random_range(0..codas.len())]);
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

/// Zipf-ish rank: small ranks much more likely.
fn zipf(rng: &mut StdRng, n: usize) -> usize {
    let u: f64 = rng.random();
    ((n as f64).powf(u) - 1.0) as usize % n
}

fn message(rng: &mut StdRng, vocab: &[String]) -> String {
    // Chat turns: mostly short, some long (tool output, long answers).
    let words = if rng.random_bool(0.8) {
        rng.random_range(5..60)
    } else {
        rng.random_range(60..400)
    };
    let mut s = String::with_capacity(words * 7);
    for i in 0..words {
        if i > 0 {
            s.push(if rng.random_bool(0.08) { '.' } else { ' ' });
            if s.ends_with('.') {
                s.push(' ');
            }
        }
        s.push_str(&vocab[zipf(rng, vocab.len())]);
    }
    s
}

/// Words of the long tail, each in about 125 of a million messages (the
/// issue's "rare word" row had 159): one in 8 messages gets one, drawn
/// from [`TAIL_WORDS`] by a second generator, so the rest of the corpus is
/// the same as without them.
const TAIL_WORDS: usize = 1000;

fn tail_word(i: usize) -> String {
    let l = |k: usize| char::from(b'a' + (k % 26) as u8);
    format!("xq{}{}{}", l(i / 676), l(i / 26), l(i))
}

/// What the `complete` marker of a corpus holds: a corpus built by an
/// older generator is built again.
const CORPUS_VERSION: &str = "2: zipf words and tail words";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The limit: FTS5 ranking alone, no join, no snippet (the issue's
/// reference statement).
const LIMIT_SQL: &str = "SELECT rowid, bm25(messages_fts) FROM messages_fts
  WHERE messages_fts MATCH ?1 ORDER BY bm25(messages_fts) LIMIT ?2";
/// The limit of `sort=recent`: FTS5 walking its index newest first (no
/// score: `recent` returns none).
const LIMIT_RECENT_SQL: &str = "SELECT rowid, NULL FROM messages_fts
  WHERE messages_fts MATCH ?1 ORDER BY rowid DESC LIMIT ?2";

/// The limit of a search within one session: FTS5 alone over the
/// session's span of ids (?3..=?4), which is all a plan could walk.
const LIMIT_SPAN_SQL: &str = "SELECT rowid, bm25(messages_fts) FROM messages_fts
  WHERE messages_fts MATCH ?1 AND rowid >= ?3 AND rowid <= ?4
  ORDER BY bm25(messages_fts) LIMIT ?2";

/// Where the corpus of `n` messages is kept between runs.
fn corpus_dir(n: usize) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-search").join(n.to_string())
}

/// One query of the table: the API's query string, the search as the API
/// parses it (its statement is `message_search::plan`'s, as the API picks
/// it) and its limit.
struct Case {
    name: &'static str,
    /// The URL's query string after `q=…&limit=20`.
    extra: String,
    filter: SearchFilter,
    limit: Limit,
}

fn id_score(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Option<f64>)> {
    Ok((r.get(0)?, r.get(1)?))
}

/// What a row is compared with.
enum Limit {
    /// The issue's statement (or its newest-first form) for the same query
    /// without any filter.
    Unfiltered(&'static str),
    /// FTS5 alone over the ids `lo..=hi` (a session's span).
    Span(i64, i64),
}

impl Case {
    fn new(name: &'static str, q: String) -> Case {
        Case {
            name,
            extra: String::new(),
            filter: SearchFilter {
                query: q,
                limit: 20,
                ..Default::default()
            },
            limit: Limit::Unfiltered(LIMIT_SQL),
        }
    }

    fn recent(mut self) -> Case {
        self.extra.push_str("&sort=recent");
        self.filter.sort = SearchSort::Recent;
        self.limit = Limit::Unfiltered(LIMIT_RECENT_SQL);
        self
    }

    fn platform(mut self, p: &str) -> Case {
        self.extra.push_str(&format!("&platform={p}"));
        self.filter.platform = Some(p.to_owned());
        self
    }

    fn role(mut self, r: Role) -> Case {
        self.extra.push_str(&format!("&role={}", r.as_str()));
        self.filter.role = Some(r);
        self
    }

    /// `since..until` in seconds after the corpus's first message.
    fn window(mut self, from: i64, to: i64) -> Case {
        let (since, until) = (1_700_000_000 + from, 1_700_000_000 + to);
        self.extra
            .push_str(&format!("&since={since}&until={until}"));
        self.filter.since_ms = Some(since * 1000);
        self.filter.until_ms = Some(until * 1000);
        self
    }

    fn session(mut self, s: &str, conn: &rusqlite::Connection) -> Case {
        self.extra.push_str(&format!("&session_id={s}"));
        self.filter.session_id = Some(s.to_owned());
        let (lo, hi) = conn
            .query_row(
                "SELECT min(id), max(id) FROM messages WHERE session_id = ?1",
                [s],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("session span");
        self.limit = Limit::Span(lo, hi);
        self
    }

    fn filtered(&self) -> bool {
        self.filter.platform.is_some()
            || self.filter.role.is_some()
            || self.filter.session_id.is_some()
            || self.filter.since_ms.is_some()
            || self.filter.until_ms.is_some()
    }

    /// Runs the limit once; returns the rows.
    fn run_limit(&self, stmt: &mut rusqlite::CachedStatement<'_>) -> usize {
        let q = &self.filter.query;
        let rows: Vec<(i64, Option<f64>)> = match self.limit {
            Limit::Unfiltered(_) => stmt.query_map(rusqlite::params![q, 21], id_score),
            Limit::Span(lo, hi) => stmt.query_map(rusqlite::params![q, 21, lo, hi], id_score),
        }
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
        std::hint::black_box(rows).len()
    }

    /// Runs one of the daemon's statements (or the one it replaced) with
    /// the daemon's parameters; returns the ids.
    fn run_search(&self, stmt: &mut rusqlite::CachedStatement<'_>) -> Vec<i64> {
        let f = &self.filter;
        let position = match f.sort {
            SearchSort::Relevance => 0,
            SearchSort::Recent => i64::MAX,
        };
        let rows: Vec<(i64, String)> = stmt
            .query_map(
                rusqlite::params![
                    f.query,
                    f.platform,
                    f.role.map(Role::as_str),
                    f.since_ms,
                    f.until_ms,
                    f.session_id,
                    21,
                    position
                ],
                |r| Ok((r.get(0)?, r.get(5)?)),
            )
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        std::hint::black_box(rows)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }
}

fn main() {
    let n: usize = env_or("BENCH_MESSAGES", 1_000_000);
    let iterations: usize = env_or("BENCH_QUERIES", 100);
    let dir = corpus_dir(n);
    let complete = dir.join("complete");
    let fresh = std::fs::read_to_string(&complete).ok().as_deref() != Some(CORPUS_VERSION);
    if fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let cred = dir.join("credential");
    write_private(&cred, TOKEN);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "tenant_id = \"{TENANT}\"\ndata_dir = \"{}\"\n[listen]\naddr = \"127.0.0.1:0\"\n[auth]\ncredential_file = \"{}\"\n[log]\nformat = \"json\"\nlevel = \"warn,hermes_tenantd::daemon=info\"\n[limits]\nbody_bytes = 16777216\n",
            dir.join("data").display(),
            cred.display()
        ),
    )
    .expect("config");
    let (mut child, addr) = spawn_daemon(&config);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(pid);
    let idle_anon = anon_kib(pid);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = reqwest::Client::new();
    let base = format!("http://{addr}/v1/tenant-runtime/{TENANT}");
    let vocab = vocabulary(5000);
    let mut rng = StdRng::seed_from_u64(42);
    let mut tail_rng = StdRng::seed_from_u64(43);

    // Ingest (once per corpus size; later runs reuse it).
    let started = Instant::now();
    let mut bytes = 0usize;
    if fresh {
        rt.block_on(async {
            let mut sent = 0;
            while sent < n {
                let take = BATCH.min(n - sent);
                let messages: Vec<serde_json::Value> = (0..take)
                    .map(|i| {
                        let mut content = message(&mut rng, &vocab);
                        if tail_rng.random_bool(0.125) {
                            content.push(' ');
                            content.push_str(&tail_word(tail_rng.random_range(0..TAIL_WORDS)));
                        }
                        bytes += content.len();
                        serde_json::json!({
                            "role": if i % 2 == 0 { "user" } else { "assistant" },
                            "content": content,
                            "created_at": 1_700_000_000 + (sent + i) as i64,
                        })
                    })
                    .collect();
                let session = format!("s{}", sent / 50_000);
                let platform = ["web", "telegram", "discord", "api"][(sent / BATCH) % 4];
                let r = client
                    .post(format!("{base}/conversations/{session}/messages"))
                    .bearer_auth(TOKEN)
                    .json(&serde_json::json!({"platform": platform, "messages": messages}))
                    .send()
                    .await
                    .expect("append");
                assert_eq!(r.status(), 201, "append failed");
                sent += take;
            }
        });
        std::fs::write(&complete, CORPUS_VERSION).expect("marker");
    }
    let ingest = started.elapsed();
    let loaded_rss = rss_kib(pid);
    let loaded_anon = anon_kib(pid);

    let conn = rusqlite::Connection::open_with_flags(
        dir.join("data/tenantd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open db");
    // The daemon's ranking function (`store::rank`), for its SQL column.
    hermes_tenantd::store::rank::register(&conn).expect("rank");
    // The same pragmas the daemon's readers use, so the comparison is fair.
    conn.pragma_update(None, "cache_size", -2048)
        .expect("pragma");
    conn.pragma_update(None, "mmap_size", 2_i64 << 30)
        .expect("pragma");
    let w = |rank: usize| vocab[rank].clone();
    let cases = [
        Case::new("tail word", tail_word(500)),
        Case::new("rare word", w(4990)),
        Case::new("uncommon word", w(3000)),
        Case::new("medium word", w(300)),
        Case::new("frequent word", w(60)),
        Case::new("common word", w(20)),
        Case::new("two words", format!("{} {}", w(100), w(400))),
        Case::new("prefix", format!("{}*", &w(700)[..3.min(w(700).len())])),
        Case::new("commonest, recent", w(0)).recent(),
        Case::new("common, platform", w(20)).platform("web"),
        Case::new("common, role", w(20)).role(Role::User),
        Case::new("common, 10% window", w(20)).window(500_000, 600_000),
        Case::new("medium, session", w(300)).session("s7", &conn),
        Case::new("rare, platform", w(4990)).platform("web"),
        Case::new("commonest, recent, platform", w(0))
            .recent()
            .platform("discord"),
    ];
    let db_bytes: u64 = ["tenantd.db", "tenantd.db-wal"]
        .iter()
        .map(|f| {
            std::fs::metadata(dir.join("data").join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();

    println!("hermes-tenantd store benchmark");
    println!(
        "  messages:            {n} (db+wal {:.0} MiB; {})",
        db_bytes as f64 / 1048576.0,
        if fresh {
            "built now"
        } else {
            "reused from an earlier run"
        }
    );
    if fresh {
        println!(
            "  ingest via API:      {:.0} messages/s ({:.1} s, batches of {BATCH}, {:.0} MiB of text)",
            n as f64 / ingest.as_secs_f64(),
            ingest.as_secs_f64(),
            bytes as f64 / 1048576.0
        );
    }
    println!(
        "  RSS idle after start: {:.1} MiB (anon {:.1}); after ingest: {:.1} MiB (anon {:.1})",
        idle_rss as f64 / 1024.0,
        idle_anon as f64 / 1024.0,
        loaded_rss as f64 / 1024.0,
        loaded_anon as f64 / 1024.0
    );
    let segments = || search_index::segments(&conn).expect("segments");
    let found = segments();
    println!("  search index: {found} segments (FTS5), as found");
    // The timed requests go through a one-thread runtime and a client of
    // its own, as `wrk -t1` does: with the multi-thread runtime the
    // connection's task runs on a worker and hands each response to this
    // thread, two cross-thread wake-ups per request that are the client's,
    // not the daemon's (`BENCH_CLIENT_RT=multi` for that client).
    let one_thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let timed_client = reqwest::Client::new();
    let multi = std::env::var("BENCH_CLIENT_RT").is_ok_and(|v| v == "multi");
    let search = Search {
        conn: &conn,
        rt: if multi { &rt } else { &one_thread },
        client: if multi { &client } else { &timed_client },
        base: &base,
        iterations,
    };
    search.table(&cases);
    if found > search_index::SEGMENTS_MAX {
        // The daemon's hourly upkeep, run here at once on the bench's own
        // connection (the daemon is idle), timing every step: each holds
        // the writer, so the longest is what an append can wait.
        let writer = rusqlite::Connection::open(dir.join("data/tenantd.db")).expect("open writer");
        writer.busy_timeout(Duration::from_secs(10)).expect("busy");
        let started = Instant::now();
        let mut steps = Vec::new();
        loop {
            let t = Instant::now();
            let worked = search_index::merge_step(&writer).expect("merge step");
            steps.push(t.elapsed().as_secs_f64() * 1000.0);
            if !worked {
                break;
            }
        }
        let total = started.elapsed().as_secs_f64();
        steps.sort_by(f64::total_cmp);
        println!(
            "  upkeep (search_index::merge_step until done, {} pages a step): {found} -> {} segments in {total:.1} s, {} steps, step p50 {:.0} ms, longest {:.0} ms",
            search_index::STEP_PAGES,
            segments(),
            steps.len(),
            percentile(&steps, 0.5),
            percentile(&steps, 1.0),
        );
        drop(writer);
        println!("  the same queries after the upkeep:");
        search.table(&cases);
    }
    println!(
        "  RSS after searches:  {:.1} MiB (anon {:.1}; the rest is mapped database pages)",
        rss_kib(pid) as f64 / 1024.0,
        anon_kib(pid) as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// What a table of search timings needs.
struct Search<'a> {
    conn: &'a rusqlite::Connection,
    rt: &'a tokio::runtime::Runtime,
    client: &'a reqwest::Client,
    base: &'a str,
    iterations: usize,
}

impl Search<'_> {
    /// One authenticated GET, its whole body read; the round trip in ms.
    fn get_ms(&self, url: &str) -> f64 {
        let t = Instant::now();
        self.rt.block_on(async {
            let r = self
                .client
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), 200, "{url} failed");
            let _ = r.bytes().await.expect("body");
        });
        t.elapsed().as_secs_f64() * 1000.0
    }

    /// Every case, `iterations` rounds of (limit, daemon SQL, HTTP[,
    /// before], GET /version) interleaved; prints p50 (p99) and the ratios
    /// to the limit. `GET /version` (authenticated, answered from memory)
    /// is the HTTP floor of that round: the client, loopback and the
    /// middleware, no store; shown beside, never part of the limit.
    fn table(&self, cases: &[Case]) {
        let (conn, base, iterations) = (self.conn, self.base, self.iterations);
        let pace = Pace::from_env();
        println!(
            "  search, limit 20, {iterations} rounds of (limit, daemon SQL, HTTP[, before], GET /version) interleaved, {}; p50 ms (p99).",
            pace.describe()
        );
        println!(
            "  The limit is FTS5 alone for the same query without its filter (a session: over the session's span of ids);"
        );
        println!(
            "  `before` is the filtered statement this build replaced (message_search::REFERENCE_SQL);"
        );
        println!(
            "  `floor` is an authenticated GET /version in the same round (client, loopback, middleware; no store):"
        );
        println!(
            "    {:<28} {:>8} {:>16} {:>16} {:>16} {:>16} {:>14} {:>7} {:>7} {:>7}",
            "query",
            "matches",
            "limit",
            "daemon SQL",
            "HTTP",
            "before",
            "floor",
            "SQL/lim",
            "HTTP/lim",
            "bef/lim"
        );
        let version_url = format!("{base}/version");
        // `BENCH_ROWS=rare,uncommon`: only the rows whose name starts with
        // one of these (all rows when unset).
        let rows = std::env::var("BENCH_ROWS").unwrap_or_default();
        let wanted = |name: &str| rows.is_empty() || rows.split(',').any(|r| name.starts_with(r));
        for case in cases.iter().filter(|c| wanted(c.name)) {
            let url = format!(
                "{base}/conversations/search?q={}&limit=20{}",
                urlencode(&case.filter.query),
                case.extra
            );
            let matches: i64 = conn
                .query_row(
                    MATCH_COUNT_SQL,
                    rusqlite::params![
                        case.filter.query,
                        case.filter.platform,
                        case.filter.role.map(Role::as_str),
                        case.filter.since_ms,
                        case.filter.until_ms,
                        case.filter.session_id
                    ],
                    |r| r.get(0),
                )
                .expect("count");
            let mut limit_stmt = conn
                .prepare_cached(match case.limit {
                    Limit::Unfiltered(sql) => sql,
                    Limit::Span(..) => LIMIT_SPAN_SQL,
                })
                .expect("prepare");
            let mut daemon_stmt = conn.prepare_cached(plan(&case.filter)).expect("prepare");
            let mut before_stmt = (case.filtered() && case.filter.sort == SearchSort::Relevance)
                .then(|| conn.prepare_cached(REFERENCE_SQL).expect("prepare"));
            let (mut lim, mut sql, mut api, mut before, mut floor) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            if !case.filtered() && case.filter.sort == SearchSort::Relevance {
                // Ranking with `store::rank` (matches skipped) returns what
                // bm25() over every match returns: checked once, untimed.
                let mut reference = conn.prepare_cached(REFERENCE_SQL).expect("prepare");
                assert_eq!(
                    case.run_search(&mut daemon_stmt),
                    case.run_search(&mut reference),
                    "{}: the plan and bm25() return different hits",
                    case.name
                );
            }
            for _ in 0..iterations {
                lim.push(pace.timed(|| {
                    case.run_limit(&mut limit_stmt);
                }));

                let mut got = Vec::new();
                sql.push(pace.timed(|| got = case.run_search(&mut daemon_stmt)));

                api.push(pace.timed(|| {
                    self.get_ms(&url);
                }));

                if let Some(stmt) = before_stmt.as_mut() {
                    let mut old = Vec::new();
                    before.push(pace.timed(|| old = case.run_search(stmt)));
                    assert_eq!(old, got, "{}: the plans return different hits", case.name);
                }

                floor.push(pace.timed(|| {
                    self.get_ms(&version_url);
                }));
            }
            for v in [&mut lim, &mut sql, &mut api, &mut before, &mut floor] {
                v.sort_by(f64::total_cmp);
            }
            let cell = |v: &[f64]| {
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.2} ({:.2})", percentile(v, 0.5), percentile(v, 0.99))
                }
            };
            let l50 = percentile(&lim, 0.5).max(1e-9);
            let ratio = |v: &[f64]| {
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.2}", percentile(v, 0.5) / l50)
                }
            };
            println!(
                "    {:<28} {:>8} {:>16} {:>16} {:>16} {:>16} {:>14} {:>7} {:>7} {:>7}",
                case.name,
                matches,
                cell(&lim),
                cell(&sql),
                cell(&api),
                cell(&before),
                cell(&floor),
                ratio(&sql),
                ratio(&api),
                ratio(&before),
            );
        }
    }
}

/// What comes before each timed leg of a round, the same for every leg.
/// A query that follows a few ms of idleness runs ~1 ms slower on this VM
/// than one that follows busy work, in this process as in the daemon
/// (BENCHMARKS.md, "After idle"); back to back, the limit runs right after
/// the bench's previous query while the daemon's threads sat idle for the
/// round, so `gap` and `hot` check that this does not decide the ratio.
#[derive(Clone, Copy)]
enum Pace {
    /// Sleep this long first (`BENCH_PACE=gap`, `BENCH_GAP_MS`, default 5):
    /// every leg starts after idleness, as a search on a daemon serving
    /// people does.
    Gap(Duration),
    /// Run the leg once untimed first (`BENCH_PACE=hot`): every leg
    /// starts right after the same work, as under a steady stream.
    Hot,
    /// Nothing (the default, `BENCH_PACE=none`).
    None,
}

impl Pace {
    fn from_env() -> Pace {
        match std::env::var("BENCH_PACE").as_deref() {
            Ok("hot") => Pace::Hot,
            Ok("none") | Err(_) => Pace::None,
            Ok("gap") => Pace::Gap(Duration::from_millis(env_or("BENCH_GAP_MS", 5))),
            Ok(other) => panic!("BENCH_PACE={other}: expected gap, hot or none"),
        }
    }

    fn describe(self) -> String {
        match self {
            Pace::Gap(d) => format!("each leg after {} ms idle", d.as_millis()),
            Pace::Hot => "each leg right after an untimed run of itself".to_owned(),
            Pace::None => "back to back".to_owned(),
        }
    }

    /// `leg`'s time in ms, paced.
    fn timed(self, mut leg: impl FnMut()) -> f64 {
        match self {
            Pace::Gap(d) => std::thread::sleep(d),
            Pace::Hot => leg(),
            Pace::None => {}
        }
        let t = Instant::now();
        leg();
        t.elapsed().as_secs_f64() * 1000.0
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
