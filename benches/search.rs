//! Store benchmark: ingest N realistic messages through the API, then
//! measure search latency against its limit, FTS5 alone (the bare ranking
//! statement on a read-only connection), beside the daemon's own SQL run
//! directly and the HTTP round trip, interleaved query by query so the
//! load of a shared machine falls on all three alike. Prints p50s and the
//! ratios to the limit; asserts nothing.
//!
//! `cargo bench --bench search` (N = 1,000,000; `BENCH_MESSAGES=100000` for a
//! quick run). The corpus is built once through the API into
//! `target/bench-search/<N>/` and reused by later runs (minutes at 1 M);
//! delete that directory to rebuild it.

use std::time::{Duration, Instant};

use hermes_tenantd::store::message_search::{SearchFilter, SearchSort, plan};
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

/// Where the corpus of `n` messages is kept between runs.
fn corpus_dir(n: usize) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-search").join(n.to_string())
}

/// One query of the table: the API's query string, the statement the
/// daemon runs for it (`message_search::plan`, as the API picks it) and
/// its limit.
struct Case {
    name: &'static str,
    q: String,
    extra: &'static str,
    daemon_sql: &'static str,
    platform: Option<&'static str>,
    limit_sql: &'static str,
}

fn main() {
    let n: usize = env_or("BENCH_MESSAGES", 1_000_000);
    let iterations: usize = env_or("BENCH_QUERIES", 100);
    let dir = corpus_dir(n);
    let complete = dir.join("complete");
    let fresh = !complete.exists();
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
                        let content = message(&mut rng, &vocab);
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
        std::fs::write(&complete, b"").expect("marker");
    }
    let ingest = started.elapsed();
    let loaded_rss = rss_kib(pid);
    let loaded_anon = anon_kib(pid);

    let cases = [
        ("rare word", vocab[4990].clone(), ""),
        ("uncommon word", vocab[3000].clone(), ""),
        ("medium word", vocab[300].clone(), ""),
        ("frequent word", vocab[60].clone(), ""),
        ("common word", vocab[20].clone(), ""),
        ("two words", format!("{} {}", vocab[100], vocab[400]), ""),
        (
            "prefix",
            format!("{}*", &vocab[700][..3.min(vocab[700].len())]),
            "",
        ),
        ("commonest, recent", vocab[0].clone(), "&sort=recent"),
        ("common, platform", vocab[20].clone(), "&platform=web"),
    ]
    .map(|(name, q, extra)| Case {
        name,
        q: q.clone(),
        extra,
        daemon_sql: plan(&SearchFilter {
            query: q,
            platform: (extra == "&platform=web").then(|| "web".to_owned()),
            sort: if extra == "&sort=recent" {
                SearchSort::Recent
            } else {
                SearchSort::Relevance
            },
            ..Default::default()
        }),
        platform: (extra == "&platform=web").then_some("web"),
        limit_sql: if extra == "&sort=recent" {
            LIMIT_RECENT_SQL
        } else {
            LIMIT_SQL
        },
    });
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("data/tenantd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open db");
    // The same pragmas the daemon's readers use, so the comparison is fair.
    conn.pragma_update(None, "cache_size", -2048)
        .expect("pragma");
    conn.pragma_update(None, "mmap_size", 256 * 1024 * 1024)
        .expect("pragma");
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
    println!(
        "  search, limit 20, {iterations} rounds of (FTS5 alone, daemon SQL, HTTP) interleaved; p50 ms (p99):"
    );
    println!(
        "    {:<18} {:>8} {:>17} {:>17} {:>17} {:>7} {:>7}",
        "query", "matches", "FTS5 alone", "daemon SQL", "HTTP", "SQL/lim", "HTTP/lim"
    );
    for case in &cases {
        let url = format!(
            "{base}/conversations/search?q={}&limit=20{}",
            urlencode(&case.q),
            case.extra
        );
        let matches: i64 = conn
            .query_row(
                "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?1",
                [&case.q],
                |r| r.get(0),
            )
            .expect("count");
        let mut limit_stmt = conn.prepare(case.limit_sql).expect("prepare");
        let mut daemon_stmt = conn.prepare(case.daemon_sql).expect("prepare");
        let (mut lim, mut sql, mut api) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iterations {
            let t = Instant::now();
            let rows: Vec<(i64, Option<f64>)> = limit_stmt
                .query_map(rusqlite::params![case.q, 21], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            std::hint::black_box(rows);
            lim.push(t.elapsed().as_secs_f64() * 1000.0);

            let t = Instant::now();
            let rows: Vec<(i64, String)> = daemon_stmt
                .query_map(
                    rusqlite::params![
                        case.q,
                        case.platform,
                        None::<String>,
                        None::<i64>,
                        None::<i64>,
                        None::<String>,
                        21,
                        if case.extra == "&sort=recent" {
                            i64::MAX
                        } else {
                            0
                        }
                    ],
                    |r| Ok((r.get(0)?, r.get(5)?)),
                )
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            std::hint::black_box(rows);
            sql.push(t.elapsed().as_secs_f64() * 1000.0);

            let t = Instant::now();
            rt.block_on(async {
                let r = client
                    .get(&url)
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .expect("search");
                assert_eq!(r.status(), 200, "search failed");
                let _ = r.bytes().await.expect("body");
            });
            api.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        for v in [&mut lim, &mut sql, &mut api] {
            v.sort_by(f64::total_cmp);
        }
        let cell = |v: &[f64]| format!("{:.2} ({:.2})", percentile(v, 0.5), percentile(v, 0.99));
        let l50 = percentile(&lim, 0.5).max(1e-9);
        println!(
            "    {:<18} {:>8} {:>17} {:>17} {:>17} {:>7.2} {:>7.2}",
            case.name,
            matches,
            cell(&lim),
            cell(&sql),
            cell(&api),
            percentile(&sql, 0.5) / l50,
            percentile(&api, 0.5) / l50,
        );
    }
    println!(
        "  RSS after searches:  {:.1} MiB (anon {:.1}; the rest is mapped database pages)",
        rss_kib(pid) as f64 / 1024.0,
        anon_kib(pid) as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
