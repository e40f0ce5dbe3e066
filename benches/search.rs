//! Store benchmark: ingest N realistic messages through the API, then
//! compare search latency through HTTP with the same query run directly on
//! SQLite, and report the daemon's RSS. Prints figures; asserts nothing.
//!
//! `cargo bench --bench search` (N = 1,000,000; `BENCH_MESSAGES=100000` for a
//! quick run).

use std::time::{Duration, Instant};

use hermes_tenantd::store::conversations::SEARCH_SQL;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod common;
use common::{spawn_daemon, status_kib, write_private};

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

fn main() {
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let iterations: usize = std::env::var("BENCH_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let cred = dir.path().join("credential");
    write_private(&cred, TOKEN);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "tenant_id = \"{TENANT}\"\ndata_dir = \"{}\"\n[listen]\naddr = \"127.0.0.1:0\"\n[auth]\ncredential_file = \"{}\"\n[log]\nformat = \"json\"\nlevel = \"warn,hermes_tenantd::daemon=info\"\n[limits]\nbody_bytes = 16777216\n",
            dir.path().join("data").display(),
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

    // Ingest.
    let started = Instant::now();
    let mut bytes = 0usize;
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
    let ingest = started.elapsed();
    let loaded_rss = rss_kib(pid);
    let loaded_anon = anon_kib(pid);

    // Search: through the API and directly.
    let queries = [
        ("rare word", vocab[3000].clone()),
        ("medium word", vocab[300].clone()),
        ("common word", vocab[20].clone()),
        ("two words", format!("{} {}", vocab[100], vocab[400])),
        (
            "prefix",
            format!("{}*", &vocab[700][..3.min(vocab[700].len())]),
        ),
    ];
    let conn = rusqlite::Connection::open_with_flags(
        dir.path().join("data/tenantd.db"),
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
            std::fs::metadata(dir.path().join("data").join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();

    println!("hermes-tenantd store benchmark");
    println!(
        "  messages:            {n} ({:.0} MiB of text, db+wal {:.0} MiB)",
        bytes as f64 / 1048576.0,
        db_bytes as f64 / 1048576.0
    );
    println!(
        "  ingest via API:      {:.0} messages/s ({:.1} s, batches of {BATCH})",
        n as f64 / ingest.as_secs_f64(),
        ingest.as_secs_f64()
    );
    println!(
        "  RSS idle after start: {:.1} MiB (anon {:.1}); after ingest: {:.1} MiB (anon {:.1})",
        idle_rss as f64 / 1024.0,
        idle_anon as f64 / 1024.0,
        loaded_rss as f64 / 1024.0,
        loaded_anon as f64 / 1024.0
    );
    println!("  search latency, limit 20, {iterations} runs each (ms):");
    println!(
        "    {:<12} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "query", "api p50", "api p99", "sql p50", "sql p99", "p50 x"
    );
    for (name, q) in &queries {
        let url = format!("{base}/conversations/search?q={}&limit=20", urlencode(q));
        let mut api = Vec::with_capacity(iterations);
        rt.block_on(async {
            for _ in 0..iterations {
                let t = Instant::now();
                let r = client
                    .get(&url)
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .expect("search");
                let _ = r.bytes().await.expect("body");
                api.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        });
        let mut sql = Vec::with_capacity(iterations);
        let mut stmt = conn.prepare(SEARCH_SQL).expect("prepare");
        for _ in 0..iterations {
            let t = Instant::now();
            let rows: Vec<(i64, String)> = stmt
                .query_map(
                    rusqlite::params![
                        q,
                        None::<String>,
                        None::<String>,
                        None::<i64>,
                        None::<i64>,
                        None::<String>,
                        21,
                        0
                    ],
                    |r| Ok((r.get(0)?, r.get(5)?)),
                )
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            std::hint::black_box(rows);
            sql.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        api.sort_by(f64::total_cmp);
        sql.sort_by(f64::total_cmp);
        let (a50, a99, s50, s99) = (
            percentile(&api, 0.5),
            percentile(&api, 0.99),
            percentile(&sql, 0.5),
            percentile(&sql, 0.99),
        );
        println!(
            "    {name:<12} {a50:>9.2} {a99:>9.2} {s50:>9.2} {s99:>9.2} {:>7.2}",
            a50 / s50.max(1e-9)
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
