//! Properties of every parser of outside input (clients, the hub, the
//! agent's files and streams): never panics on arbitrary input, and
//! round-trips where it should. Bounded case counts so the normal test
//! command runs them. (The `.env` parser has its own property on its
//! branch.)

use hermes_tenantd::config::{Config, Source};
use hermes_tenantd::cron::{schedule::Schedule, spec};
use hermes_tenantd::hub::reply;
use hermes_tenantd::runs::gateway::{SseFrame, SseParser};
use hermes_tenantd::skills::parse_skill_md;
use hermes_tenantd::store::{StoreError, cursor, memory};
use proptest::prelude::*;
use serde_json::Value;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings matching the pattern `schema/openapi.yaml` gives a cursor
/// parameter (anchors dropped: the generator matches whole strings).
fn doc_cursor(param: &str) -> impl Strategy<Value = String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/openapi.yaml");
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("read the document"))
            .expect("parse the document");
    let pattern = doc["components"]["parameters"][param]["schema"]["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("{param} has a pattern"))
        .trim_start_matches('^')
        .trim_end_matches('$')
        .to_owned();
    proptest::string::string_regex(&pattern).expect("a pattern proptest can generate from")
}

/// Any JSON value, a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("name".to_owned()),
                    Just("schedule".to_owned()),
                    Just("prompt".to_owned()),
                    Just("kind".to_owned()),
                    Just("expr".to_owned()),
                    Just("minutes".to_owned()),
                    Just("run_at".to_owned()),
                    Just("repeat".to_owned()),
                    Just("times".to_owned()),
                    Just("ack_seq".to_owned()),
                    Just("desired".to_owned()),
                    Just("agent".to_owned()),
                    Just("access".to_owned()),
                    Just("now".to_owned()),
                    ".{0,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cursor_decode_never_panics(s in any::<String>()) {
        let _ = cursor::decode(&s);
        let _ = cursor::int(Some(&s), 0);
        let _ = cursor::time_id(Some(&s));
    }

    /// Every cursor the document calls valid decodes (the hub may check
    /// what it sends against the document; schemathesis sends such values).
    #[test]
    fn documented_cursors_decode(
        number in doc_cursor("cursorNumber"),
        keyset in doc_cursor("cursorKeyset"),
        pair in doc_cursor("cursorPair"),
        name in doc_cursor("cursorName"),
    ) {
        prop_assert!(cursor::int(Some(&number), 0).is_ok(), "{}", number);
        prop_assert!(cursor::time_id(Some(&keyset)).is_ok(), "{}", keyset);
        prop_assert!(pair.is_empty() || cursor::fields(&pair, 2).is_ok(), "{}", pair);
        prop_assert!(cursor::decode(&name).is_ok(), "{}", name);
    }

    #[test]
    fn cursor_round_trips(s in any::<String>()) {
        prop_assume!(s.len() <= 256);
        prop_assert_eq!(cursor::decode(&cursor::encode(&s)).ok(), Some(s));
    }

    #[test]
    fn schedule_parse_never_panics_and_firings_render(s in any::<String>(), ascii in "[ 0-9a-z*/:,@TZ+-]{0,32}") {
        let now = chrono::Utc::now();
        for text in [&s, &ascii] {
            if let Ok(sched) = Schedule::parse(text) {
                if let Some(next) = sched.next_after(now, now, chrono_tz::Tz::UTC) {
                    prop_assert!(hermes_tenantd::timestamp::in_range_utc(&next));
                }
                let _ = sched.latest_at_or_before(now, now, chrono_tz::Tz::UTC);
                let _ = sched.shortest_gap(now, chrono_tz::Tz::UTC);
            }
        }
    }

    #[test]
    fn interval_schedules_parse_and_fire_after_now(
        n in 1u64..100_000,
        (unit, secs) in prop::sample::select(vec![("s", 1u64), ("m", 60), ("h", 3600), ("d", 86_400), ("w", 604_800)]),
    ) {
        let text = format!("every {n}{unit}");
        let century = 100 * 366 * 86_400;
        match Schedule::parse(&text) {
            Ok(sched) => {
                prop_assert!(n * secs <= century);
                let now = chrono::Utc::now();
                let next = sched.next_after(now, now, chrono_tz::Tz::UTC).expect("a next firing");
                prop_assert!(next > now);
            }
            Err(e) => prop_assert!(n * secs > century, "{text}: {e}"),
        }
    }

    #[test]
    fn cron_spec_never_panics(body in json()) {
        let _ = spec::parse(&body);
    }

    #[test]
    fn heartbeat_reply_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), body in json()) {
        let _ = reply::parse(&bytes);
        let text = serde_json::to_vec(&body).expect("json");
        let _ = reply::parse(&text);
    }

    #[test]
    fn sse_parser_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)) {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in &chunks {
            if p.feed(c, &mut out).is_err() {
                break;
            }
        }
    }

    /// Frames written the way the gateway writes them come back whole,
    /// however the stream is cut into chunks.
    #[test]
    fn sse_frames_round_trip_across_chunk_boundaries(
        frames in prop::collection::vec(
            (prop::option::of("[a-z][a-z._]{0,15}"), prop::collection::vec("[^\r\n]{0,40}", 1..4)),
            1..6,
        ),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        crlf in any::<bool>(),
    ) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut wire = String::new();
        for (event, data) in &frames {
            if let Some(e) = event {
                wire.push_str(&format!("event: {e}{nl}"));
            }
            for line in data {
                wire.push_str(&format!("data: {line}{nl}"));
            }
            wire.push_str(nl);
        }
        let bytes = wire.as_bytes();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut p = SseParser::default();
        let mut out: Vec<SseFrame> = Vec::new();
        let mut start = 0;
        for end in points.into_iter().chain([bytes.len()]) {
            p.feed(&bytes[start..end], &mut out).expect("short lines");
            start = end;
        }
        prop_assert_eq!(out.len(), frames.len());
        for (got, (event, data)) in out.iter().zip(&frames) {
            prop_assert_eq!(&got.event, event);
            prop_assert_eq!(&got.data, &data.join("\n"));
        }
    }

    #[test]
    fn skill_front_matter_never_panics(text in any::<String>(), yaml in "[ -~\n]{0,200}") {
        let _ = parse_skill_md(&text, "dir");
        let _ = parse_skill_md(&format!("---\n{yaml}\n---\nbody"), "dir");
    }

    #[test]
    fn skill_name_and_description_round_trip(name in "[a-z][a-z0-9-]{0,30}", desc in "[A-Za-z0-9 ,.]{1,80}") {
        let desc = desc.trim().to_owned();
        prop_assume!(!desc.is_empty());
        let p = parse_skill_md(&format!("---\nname: {name}\ndescription: \"{desc}\"\n---\n# body\n"), "dir");
        prop_assert_eq!(p.error, None);
        prop_assert_eq!(p.name, name);
        prop_assert_eq!(p.description, desc);
    }

    /// Any value for any limits/store/runs key is a clean error or a config.
    #[test]
    fn config_values_never_panic(
        key in prop::sample::select(vec![
            "LIMITS__BODY_BYTES", "LIMITS__REQUEST_TIMEOUT", "LIMITS__CONCURRENCY",
            "LIMITS__PAGE_SIZE_MAX", "LIMITS__HEADER_READ_TIMEOUT", "LIMITS__IDLE_TIMEOUT",
            "LIMITS__TLS_HANDSHAKE_TIMEOUT", "LIMITS__MAX_CONNECTIONS", "LIMITS__HTTP2_MAX_STREAMS",
            "STORE__READERS", "STORE__SYNCHRONOUS", "AUTH__ROTATION_OVERLAP",
            "HUB__HEARTBEAT_INTERVAL", "LISTEN__ADDR", "LOG__LEVEL", "LOG__FORMAT",
        ]),
        value in prop_oneof![any::<String>(), "[0-9]{1,24}[a-z]{0,3}", Just(String::new())],
    ) {
        let env = vec![(format!("HERMES_TENANTD_{key}"), value)];
        let _ = Config::load_with_env(&Source { file: None, dev: true }, env);
    }
}

/// FTS search over real tables: plain mode never fails on any text; FTS
/// mode is a result or a clean `InvalidQuery`, never an internal error.
#[test]
fn search_queries_never_fail_the_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("t.db");
    let store =
        hermes_tenantd::store::Store::open_blocking(&path, &Default::default()).expect("open");
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("conn");
    for content in [
        "hello world",
        "tool output: ls -la",
        "naïve café ☕",
        "AND OR NOT NEAR",
    ] {
        let m: memory::NewMemory =
            serde_json::from_value(serde_json::json!({ "content": content })).expect("memory");
        memory::insert(&conn, &m).expect("insert");
    }
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(
            &prop_oneof![
                any::<String>(),
                "[a-z\"*():^+ -]{0,24}".prop_map(String::from)
            ],
            |q| {
                match memory::search(&conn, &q, true, 10, None) {
                    Ok(_) => {}
                    Err(StoreError::Invalid(_)) => prop_assert!(q.trim().is_empty()),
                    Err(e) => prop_assert!(false, "plain {q:?}: {e}"),
                }
                match memory::search(&conn, &q, false, 10, None) {
                    Ok(_) | Err(StoreError::Invalid(_) | StoreError::InvalidQuery(_)) => {}
                    Err(e) => prop_assert!(false, "fts {q:?}: {e}"),
                }
                Ok(())
            },
        )
        .expect("property");
}
