//! The serde-facing shape of the file and the environment overrides,
//! before validation.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::{ConfigError, ENV_PREFIX};

// ---- the raw, serde-facing shape -------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Raw {
    pub(super) tenant_id: Option<String>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) listen: RawListen,
    pub(super) auth: RawAuth,
    pub(super) gateway: RawGateway,
    pub(super) hub: RawHub,
    pub(super) limits: RawLimits,
    pub(super) store: RawStore,
    pub(super) runs: RawRuns,
    pub(super) cron: RawCron,
    pub(super) log: RawLog,
    pub(super) files: RawFiles,
    pub(super) env: RawEnv,
    pub(super) skills: RawSkills,
    pub(super) agent_card: RawAgentCard,
    pub(super) releases: super::releases::RawReleases,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFiles {
    pub(super) roots: Option<Vec<RawRoot>>,
    #[serde(deserialize_with = "lenient")]
    pub(super) preview_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoot {
    pub(super) name: String,
    pub(super) path: PathBuf,
    #[serde(default)]
    pub(super) read_only: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEnv {
    pub(super) reserved: Option<ListOrCsv>,
    #[serde(deserialize_with = "lenient")]
    pub(super) value_max_bytes: Option<usize>,
}

/// A list from the file, or comma-separated text from the environment.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ListOrCsv {
    List(Vec<String>),
    Csv(String),
}

impl ListOrCsv {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            ListOrCsv::List(v) => v,
            ListOrCsv::Csv(s) => s
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSkills {
    pub(super) debounce: Option<String>,
    pub(super) rescan_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAgentCard {
    pub(super) name: Option<String>,
    pub(super) description: Option<String>,
    pub(super) url: Option<String>,
    pub(super) organization: Option<String>,
    pub(super) organization_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRuns {
    #[serde(deserialize_with = "lenient")]
    pub(super) max_input_bytes: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    pub(super) subscribers_per_run: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    pub(super) subscribers_total: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    pub(super) queue_depth: Option<usize>,
    pub(super) retention: Option<String>,
    pub(super) keepalive: Option<String>,
    pub(super) history_sync_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCron {
    #[serde(deserialize_with = "lenient")]
    pub(super) max_jobs: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    pub(super) max_prompt_chars: Option<usize>,
    pub(super) min_interval: Option<String>,
    pub(super) missed_grace: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub(super) history_per_job: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    pub(super) deliveries_max: Option<usize>,
    pub(super) delivery_backoff_base: Option<String>,
    pub(super) delivery_backoff_cap: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawListen {
    pub(super) addr: Option<String>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) metrics_addr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuth {
    pub(super) credential_file: Option<PathBuf>,
    pub(super) rotation_overlap: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawGateway {
    pub(super) command: Option<String>,
    pub(super) hermes_home: Option<PathBuf>,
    #[serde(deserialize_with = "lenient")]
    pub(super) port: Option<u16>,
    pub(super) start_timeout: Option<String>,
    pub(super) stop_grace: Option<String>,
    pub(super) venv: Option<PathBuf>,
    pub(super) workdir: Option<PathBuf>,
    pub(super) managed_dir: Option<PathBuf>,
    pub(super) health_interval: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub(super) unhealthy_threshold: Option<u32>,
    pub(super) backoff_base: Option<String>,
    pub(super) backoff_cap: Option<String>,
    pub(super) backoff_reset: Option<String>,
    pub(super) crash_loop_window: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub(super) crash_loop_count: Option<u32>,
    #[serde(deserialize_with = "lenient")]
    pub(super) log_file_bytes: Option<u64>,
    #[serde(deserialize_with = "lenient")]
    pub(super) log_files: Option<u32>,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
    pub(super) memory_max: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub(super) tasks_max: Option<u64>,
    #[serde(deserialize_with = "lenient")]
    pub(super) cpu_weight: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHub {
    pub(super) url: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) heartbeat_interval: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub(super) heartbeat_jitter_percent: Option<u32>,
    pub(super) backoff_max: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) clock_skew_threshold: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub(super) usage_batch: Option<u32>,
    pub(super) stop_wait_for_runs: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    #[serde(deserialize_with = "lenient")]
    pub(super) body_bytes: Option<usize>,
    pub(super) request_timeout: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub(super) concurrency: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    pub(super) page_size_max: Option<u32>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) tls_handshake_timeout: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub(super) max_connections: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    pub(super) http2_max_streams: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    pub(super) synchronous: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub(super) readers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
}

/// Numbers arrive as TOML integers from the file and as strings from the
/// environment; accept both.
pub(super) fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + TryFrom<i64>,
    <T as FromStr>::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(i64),
        Str(String),
    }
    match Option::<NumOrStr>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrStr::Num(n)) => T::try_from(n)
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{n} is out of range"))),
        Some(NumOrStr::Str(s)) => s
            .trim()
            .parse::<T>()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}"))),
    }
}

pub(super) fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Env {
                var,
                message: "empty key segment".into(),
            });
        }
        let mut cursor = &mut *table;
        for part in &parts[..parts.len() - 1] {
            let entry = cursor
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cursor = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("`{part}` is not a section"),
                    });
                }
            };
        }
        if let Some(last) = parts.last() {
            cursor.insert(last.clone(), toml::Value::String(value));
        }
    }
    Ok(())
}
