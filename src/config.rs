//! Configuration: a TOML file, overridden key by key by `HERMES_TENANTD_*`
//! environment variables (`__` nests), validated once into typed values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "HERMES_TENANTD_";
/// Production location of the configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/hermes-tenantd/config.toml";
/// Tenant id used by `--dev` when none is configured.
pub const DEV_TENANT_ID: &str = "dev-tenant";
/// Data directory used by `--dev` when none is configured.
pub const DEV_DATA_DIR: &str = ".tenantd-dev";

/// A configuration that cannot be used. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The whole configuration after validation.
#[derive(Debug, Clone)]
pub struct Config {
    pub dev: bool,
    pub tenant_id: String,
    pub data_dir: PathBuf,
    pub listen: ListenConfig,
    pub auth: AuthConfig,
    pub gateway: GatewayConfig,
    pub hub: HubConfig,
    pub limits: LimitsConfig,
    pub store: StoreConfig,
    pub runs: RunsConfig,
    pub cron: CronConfig,
    pub log: LogConfig,
    pub files: FilesConfig,
    pub env: EnvConfig,
    pub skills: SkillsConfig,
    pub agent_card: AgentCardConfig,
}

/// Tenant-visible file roots (`[files]`).
#[derive(Debug, Clone)]
pub struct FilesConfig {
    pub roots: Vec<FileRoot>,
    /// Largest file `GET /files/content` and `/skill-files` return as text.
    pub preview_bytes: u64,
}

/// One named directory the tenant may browse.
#[derive(Debug, Clone)]
pub struct FileRoot {
    pub name: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// The Hermes `.env` (`[env]`).
#[derive(Debug, Clone)]
pub struct EnvConfig {
    /// Operator-reserved names, on top of the built-in ones.
    pub reserved: Vec<String>,
    pub value_max_bytes: usize,
}

/// The skills index (`[skills]`).
#[derive(Debug, Clone)]
pub struct SkillsConfig {
    /// Quiet time after a change on disk before it is indexed.
    pub debounce: Duration,
    /// Full reconciliation period, a safety net for missed events.
    pub rescan_interval: Duration,
}

/// What the public A2A agent card says (`[agent_card]`).
#[derive(Debug, Clone)]
pub struct AgentCardConfig {
    pub name: Option<String>,
    pub description: Option<String>,
    pub url: Option<String>,
    pub organization: Option<String>,
    pub organization_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RunsConfig {
    pub max_input_bytes: usize,
    pub subscribers_per_run: usize,
    pub subscribers_total: usize,
    pub queue_depth: usize,
    pub retention: Duration,
    pub keepalive: Duration,
    pub history_sync_interval: Duration,
}

/// Agent cron limits and timings.
#[derive(Debug, Clone)]
pub struct CronConfig {
    pub max_jobs: usize,
    pub max_prompt_chars: usize,
    /// The shortest allowed gap between two firings of a job.
    pub min_interval: Duration,
    /// A firing missed while the daemon was down runs at start if it is
    /// at most this old.
    pub missed_grace: Duration,
    pub history_per_job: usize,
    /// Deliveries kept while the hub is away; beyond, the oldest are dropped.
    pub deliveries_max: usize,
    pub delivery_backoff_base: Duration,
    pub delivery_backoff_cap: Duration,
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub credential_file: PathBuf,
    pub rotation_overlap: Duration,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The command split into program and arguments.
    pub command: Vec<String>,
    pub hermes_home: PathBuf,
    pub port: u16,
    pub start_timeout: Duration,
    pub stop_grace: Duration,
    /// A virtualenv whose `bin/` is searched first for the command.
    pub venv: Option<PathBuf>,
    /// The child's working directory (default: `hermes_home`).
    pub workdir: PathBuf,
    /// The daemon-owned managed scope (`HERMES_MANAGED_DIR`).
    pub managed_dir: PathBuf,
    pub health_interval: Duration,
    /// Consecutive failed `/health` probes that make a running gateway unhealthy.
    pub unhealthy_threshold: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Healthy for this long resets the backoff.
    pub backoff_reset: Duration,
    pub crash_loop_window: Duration,
    /// More than this many restarts within the window: `failed`.
    pub crash_loop_count: u32,
    /// Size of one gateway log file before it is rotated.
    pub log_file_bytes: u64,
    /// Rotated gateway log files kept besides the current one.
    pub log_files: u32,
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// `None`: no heartbeats and no deliveries.
    pub url: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub heartbeat_interval: Duration,
    /// Each beat's delay is the interval times a factor in `1 ± jitter`.
    pub heartbeat_jitter: f64,
    /// Cap of the exponential backoff after failed beats.
    pub backoff_max: Duration,
    /// Timeout of one heartbeat request (well under the interval).
    pub request_timeout: Duration,
    /// A hub clock further than this from ours raises a warning.
    pub clock_skew_threshold: Duration,
    /// Most usage deltas carried by one beat.
    pub usage_batch: u32,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub body_bytes: usize,
    pub request_timeout: Duration,
    pub concurrency: usize,
    pub page_size_max: u32,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub synchronous: Synchronous,
    pub readers: usize,
}

/// SQLite's `synchronous` pragma: `full` survives power loss, `normal`
/// survives a process crash only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

// ---- the raw, serde-facing shape -------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Raw {
    tenant_id: Option<String>,
    data_dir: Option<PathBuf>,
    listen: RawListen,
    auth: RawAuth,
    gateway: RawGateway,
    hub: RawHub,
    limits: RawLimits,
    store: RawStore,
    runs: RawRuns,
    cron: RawCron,
    log: RawLog,
    files: RawFiles,
    env: RawEnv,
    skills: RawSkills,
    agent_card: RawAgentCard,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFiles {
    roots: Option<Vec<RawRoot>>,
    #[serde(deserialize_with = "lenient")]
    preview_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoot {
    name: String,
    path: PathBuf,
    #[serde(default)]
    read_only: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEnv {
    reserved: Option<ListOrCsv>,
    #[serde(deserialize_with = "lenient")]
    value_max_bytes: Option<usize>,
}

/// A list from the file, or comma-separated text from the environment.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ListOrCsv {
    List(Vec<String>),
    Csv(String),
}

impl ListOrCsv {
    fn into_vec(self) -> Vec<String> {
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
struct RawSkills {
    debounce: Option<String>,
    rescan_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAgentCard {
    name: Option<String>,
    description: Option<String>,
    url: Option<String>,
    organization: Option<String>,
    organization_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRuns {
    #[serde(deserialize_with = "lenient")]
    max_input_bytes: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    subscribers_per_run: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    subscribers_total: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    queue_depth: Option<usize>,
    retention: Option<String>,
    keepalive: Option<String>,
    history_sync_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCron {
    #[serde(deserialize_with = "lenient")]
    max_jobs: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    max_prompt_chars: Option<usize>,
    min_interval: Option<String>,
    missed_grace: Option<String>,
    #[serde(deserialize_with = "lenient")]
    history_per_job: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    deliveries_max: Option<usize>,
    delivery_backoff_base: Option<String>,
    delivery_backoff_cap: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawListen {
    addr: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    metrics_addr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    credential_file: Option<PathBuf>,
    rotation_overlap: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGateway {
    command: Option<String>,
    hermes_home: Option<PathBuf>,
    #[serde(deserialize_with = "lenient")]
    port: Option<u16>,
    start_timeout: Option<String>,
    stop_grace: Option<String>,
    venv: Option<PathBuf>,
    workdir: Option<PathBuf>,
    managed_dir: Option<PathBuf>,
    health_interval: Option<String>,
    #[serde(deserialize_with = "lenient")]
    unhealthy_threshold: Option<u32>,
    backoff_base: Option<String>,
    backoff_cap: Option<String>,
    backoff_reset: Option<String>,
    crash_loop_window: Option<String>,
    #[serde(deserialize_with = "lenient")]
    crash_loop_count: Option<u32>,
    #[serde(deserialize_with = "lenient")]
    log_file_bytes: Option<u64>,
    #[serde(deserialize_with = "lenient")]
    log_files: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHub {
    url: Option<String>,
    ca_file: Option<PathBuf>,
    heartbeat_interval: Option<String>,
    #[serde(deserialize_with = "lenient")]
    heartbeat_jitter_percent: Option<u32>,
    backoff_max: Option<String>,
    request_timeout: Option<String>,
    clock_skew_threshold: Option<String>,
    #[serde(deserialize_with = "lenient")]
    usage_batch: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    #[serde(deserialize_with = "lenient")]
    body_bytes: Option<usize>,
    request_timeout: Option<String>,
    #[serde(deserialize_with = "lenient")]
    concurrency: Option<usize>,
    #[serde(deserialize_with = "lenient")]
    page_size_max: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    synchronous: Option<String>,
    #[serde(deserialize_with = "lenient")]
    readers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

/// Numbers arrive as TOML integers from the file and as strings from the
/// environment; accept both.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
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

// ---- loading ---------------------------------------------------------------------

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// An explicit file; it must exist.
    pub file: Option<PathBuf>,
    /// `--dev`: defaults for a laptop, no file needed.
    pub dev: bool,
}

impl Config {
    /// Load from the file (explicit, or the production default when it
    /// exists) and the process environment.
    pub fn load(source: &Source) -> Result<Config, ConfigError> {
        Self::load_with_env(source, std::env::vars())
    }

    /// Load with an explicit environment (tests).
    pub fn load_with_env(
        source: &Source,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file = match (&source.file, source.dev) {
            (Some(f), _) => Some(f.clone()),
            (None, false) if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Some(PathBuf::from(DEFAULT_CONFIG_FILE))
            }
            _ => None,
        };
        let mut table = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.message().to_owned(),
                })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let raw: Raw = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| {
                let key = e.path().to_string();
                let message = e.into_inner().message().to_owned();
                invalid(&key, message)
            },
        )?;
        validate(raw, source.dev)
    }
}

fn apply_env(
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

fn duration(key: &str, value: Option<String>, default: &str) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_owned());
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("`{text}` is not a duration like `30s` or `10m`: {e}"),
        )
    })?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

fn non_empty_path(v: Option<PathBuf>) -> Option<PathBuf> {
    v.filter(|p| !p.as_os_str().is_empty())
}

/// `true` for a valid tenant id: what the hub uses in URLs.
pub fn is_valid_tenant_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn validate(raw: Raw, dev: bool) -> Result<Config, ConfigError> {
    let tenant_id = match non_empty(raw.tenant_id) {
        Some(t) => t,
        None if dev => DEV_TENANT_ID.to_owned(),
        None => return Err(invalid("tenant_id", "is required (or run with --dev)")),
    };
    if !is_valid_tenant_id(&tenant_id) {
        return Err(invalid(
            "tenant_id",
            "must be 1-128 characters of letters, digits, `-`, `_`, `.`, starting with a letter or digit",
        ));
    }

    let data_dir = non_empty_path(raw.data_dir).unwrap_or_else(|| {
        if dev {
            PathBuf::from(DEV_DATA_DIR)
        } else {
            PathBuf::from("/var/lib/hermes-tenantd")
        }
    });
    let data_dir = absolute(&data_dir);

    let addr_text = non_empty(raw.listen.addr).unwrap_or_else(|| "127.0.0.1:8643".into());
    let addr: SocketAddr = addr_text.parse().map_err(|_| {
        invalid(
            "listen.addr",
            format!("`{addr_text}` is not an address like 127.0.0.1:8643"),
        )
    })?;
    let tls = match (
        non_empty_path(raw.listen.tls_cert),
        non_empty_path(raw.listen.tls_key),
    ) {
        (Some(cert), Some(key)) => {
            for (k, p) in [("listen.tls_cert", &cert), ("listen.tls_key", &key)] {
                if !p.is_file() {
                    return Err(invalid(
                        k,
                        format!("{} is not a readable file", p.display()),
                    ));
                }
            }
            Some(TlsFiles { cert, key })
        }
        (Some(_), None) => return Err(invalid("listen.tls_key", "is required with tls_cert")),
        (None, Some(_)) => return Err(invalid("listen.tls_cert", "is required with tls_key")),
        (None, None) => None,
    };
    if tls.is_none() && !addr.ip().is_loopback() {
        return Err(invalid(
            "listen.addr",
            format!(
                "{addr} is not loopback: set listen.tls_cert and listen.tls_key (plain HTTP is allowed on loopback only)"
            ),
        ));
    }
    let metrics_addr = match non_empty(raw.listen.metrics_addr) {
        Some(t) => Some(t.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "listen.metrics_addr",
                format!("`{t}` is not an address like 127.0.0.1:9643"),
            )
        })?),
        None => None,
    };
    if let Some(m) = metrics_addr {
        if m == addr && addr.port() != 0 {
            return Err(invalid(
                "listen.metrics_addr",
                "must differ from listen.addr",
            ));
        }
    }

    let credential_file = non_empty_path(raw.auth.credential_file).unwrap_or_else(|| {
        if dev {
            data_dir.join("credential")
        } else {
            PathBuf::from("/etc/hermes-tenantd/credential")
        }
    });
    let auth = AuthConfig {
        credential_file: absolute(&credential_file),
        rotation_overlap: duration("auth.rotation_overlap", raw.auth.rotation_overlap, "10m")?,
    };

    let mut gw = raw.gateway;
    let command_text = non_empty(gw.command.take())
        .unwrap_or_else(|| "hermes gateway run --external-supervisor".into());
    let command = split_command(&command_text).map_err(|m| invalid("gateway.command", m))?;
    let hermes_home = non_empty_path(gw.hermes_home.take()).unwrap_or_else(|| {
        if dev {
            data_dir.join("hermes-home")
        } else {
            PathBuf::from("/home/hermes/.hermes")
        }
    });
    let port = gw.port.unwrap_or(8642);
    if port == 0 {
        return Err(invalid("gateway.port", "must be 1-65535"));
    }
    let gateway = validate_gateway(gw, command, absolute(&hermes_home), port, &data_dir)?;

    let url = match non_empty(raw.hub.url) {
        Some(u) => {
            let parsed = reqwest::Url::parse(&u)
                .map_err(|e| invalid("hub.url", format!("`{u}` is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "https" | "http") {
                return Err(invalid("hub.url", "must be an https:// URL"));
            }
            if parsed.scheme() == "http"
                && !parsed
                    .host_str()
                    .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]")
            {
                return Err(invalid(
                    "hub.url",
                    "plain http is allowed for a loopback hub only; use https://",
                ));
            }
            Some(u.trim_end_matches('/').to_owned())
        }
        None => None,
    };
    let ca_file = non_empty_path(raw.hub.ca_file);
    if let Some(ca) = &ca_file {
        if !ca.is_file() {
            return Err(invalid(
                "hub.ca_file",
                format!("{} is not a readable file", ca.display()),
            ));
        }
    }
    let heartbeat_interval = duration("hub.heartbeat_interval", raw.hub.heartbeat_interval, "30s")?;
    let jitter_percent = raw.hub.heartbeat_jitter_percent.unwrap_or(10);
    if jitter_percent > 50 {
        return Err(invalid(
            "hub.heartbeat_jitter_percent",
            "must be between 0 and 50",
        ));
    }
    // Default: a third of the interval, at most 10 s, so a hung hub costs
    // one slot and never overlaps the next beat.
    let default_timeout = humantime::format_duration(
        (heartbeat_interval / 3).clamp(Duration::from_millis(50), Duration::from_secs(10)),
    )
    .to_string();
    let usage_batch = raw.hub.usage_batch.unwrap_or(500);
    if !(1..=10_000).contains(&usage_batch) {
        return Err(invalid("hub.usage_batch", "must be between 1 and 10000"));
    }
    let hub = HubConfig {
        url,
        ca_file,
        heartbeat_interval,
        heartbeat_jitter: f64::from(jitter_percent) / 100.0,
        backoff_max: duration("hub.backoff_max", raw.hub.backoff_max, "5m")?,
        request_timeout: duration(
            "hub.request_timeout",
            raw.hub.request_timeout,
            &default_timeout,
        )?,
        clock_skew_threshold: duration(
            "hub.clock_skew_threshold",
            raw.hub.clock_skew_threshold,
            "60s",
        )?,
        usage_batch,
    };

    let body_bytes = raw.limits.body_bytes.unwrap_or(1024 * 1024);
    if !(1024..=64 * 1024 * 1024).contains(&body_bytes) {
        return Err(invalid(
            "limits.body_bytes",
            "must be between 1024 and 67108864",
        ));
    }
    let concurrency = raw.limits.concurrency.unwrap_or(1024);
    if concurrency == 0 {
        return Err(invalid("limits.concurrency", "must be at least 1"));
    }
    let page_size_max = raw.limits.page_size_max.unwrap_or(200);
    if !(1..=10_000).contains(&page_size_max) {
        return Err(invalid(
            "limits.page_size_max",
            "must be between 1 and 10000",
        ));
    }
    let limits = LimitsConfig {
        body_bytes,
        request_timeout: duration("limits.request_timeout", raw.limits.request_timeout, "30s")?,
        concurrency,
        page_size_max,
    };

    let synchronous = match non_empty(raw.store.synchronous).as_deref() {
        None | Some("full") => Synchronous::Full,
        Some("normal") => Synchronous::Normal,
        Some(other) => {
            return Err(invalid(
                "store.synchronous",
                format!("`{other}` is not one of full, normal"),
            ));
        }
    };
    let readers = raw.store.readers.unwrap_or(4);
    if !(1..=64).contains(&readers) {
        return Err(invalid("store.readers", "must be between 1 and 64"));
    }

    let count = |key: &str, v: Option<usize>, default: usize, max: usize| {
        let n = v.unwrap_or(default);
        if (1..=max).contains(&n) {
            Ok(n)
        } else {
            Err(invalid(key, format!("must be between 1 and {max}")))
        }
    };
    let runs = RunsConfig {
        max_input_bytes: count(
            "runs.max_input_bytes",
            raw.runs.max_input_bytes,
            256 * 1024,
            16 * 1024 * 1024,
        )?,
        subscribers_per_run: count(
            "runs.subscribers_per_run",
            raw.runs.subscribers_per_run,
            64,
            10_000,
        )?,
        subscribers_total: count(
            "runs.subscribers_total",
            raw.runs.subscribers_total,
            1024,
            100_000,
        )?,
        queue_depth: count("runs.queue_depth", raw.runs.queue_depth, 64, 10_000)?,
        retention: duration("runs.retention", raw.runs.retention, "7d")?,
        keepalive: duration("runs.keepalive", raw.runs.keepalive, "15s")?,
        history_sync_interval: duration(
            "runs.history_sync_interval",
            raw.runs.history_sync_interval,
            "30s",
        )?,
    };
    let cron = CronConfig {
        max_jobs: count("cron.max_jobs", raw.cron.max_jobs, 100, 100_000)?,
        max_prompt_chars: count(
            "cron.max_prompt_chars",
            raw.cron.max_prompt_chars,
            5000,
            1024 * 1024,
        )?,
        min_interval: duration("cron.min_interval", raw.cron.min_interval, "60s")?,
        missed_grace: duration("cron.missed_grace", raw.cron.missed_grace, "10m")?,
        history_per_job: count(
            "cron.history_per_job",
            raw.cron.history_per_job,
            100,
            100_000,
        )?,
        deliveries_max: count(
            "cron.deliveries_max",
            raw.cron.deliveries_max,
            1000,
            1_000_000,
        )?,
        delivery_backoff_base: duration(
            "cron.delivery_backoff_base",
            raw.cron.delivery_backoff_base,
            "2s",
        )?,
        delivery_backoff_cap: duration(
            "cron.delivery_backoff_cap",
            raw.cron.delivery_backoff_cap,
            "10m",
        )?,
    };
    if cron.delivery_backoff_cap < cron.delivery_backoff_base {
        return Err(invalid(
            "cron.delivery_backoff_cap",
            "must not be shorter than cron.delivery_backoff_base",
        ));
    }

    let format = match non_empty(raw.log.format).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(invalid(
                "log.format",
                format!("`{other}` is not one of text, json"),
            ));
        }
    };
    let level = non_empty(raw.log.level).unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        return Err(invalid(
            "log.level",
            format!("`{level}` is not a log filter like `info` or `hermes_tenantd=debug`"),
        ));
    }

    let files = validate_files(raw.files, &gateway.hermes_home)?;
    let env = validate_env(raw.env)?;
    let skills = SkillsConfig {
        debounce: duration("skills.debounce", raw.skills.debounce, "150ms")?,
        rescan_interval: duration("skills.rescan_interval", raw.skills.rescan_interval, "5m")?,
    };
    if skills.debounce > Duration::from_secs(5) {
        return Err(invalid("skills.debounce", "must be at most 5s"));
    }
    let agent_card = AgentCardConfig {
        name: non_empty(raw.agent_card.name),
        description: non_empty(raw.agent_card.description),
        url: match non_empty(raw.agent_card.url) {
            Some(u) => Some(http_url("agent_card.url", u)?),
            None => None,
        },
        organization: non_empty(raw.agent_card.organization),
        organization_url: match non_empty(raw.agent_card.organization_url) {
            Some(u) => Some(http_url("agent_card.organization_url", u)?),
            None => None,
        },
    };

    Ok(Config {
        dev,
        tenant_id,
        data_dir,
        listen: ListenConfig {
            addr,
            tls,
            metrics_addr,
        },
        auth,
        gateway,
        hub,
        limits,
        store: StoreConfig {
            synchronous,
            readers,
        },
        runs,
        cron,
        log: LogConfig { format, level },
        files,
        env,
        skills,
        agent_card,
    })
}

fn http_url(key: &str, u: String) -> Result<String, ConfigError> {
    let parsed =
        reqwest::Url::parse(&u).map_err(|e| invalid(key, format!("`{u}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(invalid(key, "must be an http(s) URL"));
    }
    Ok(u)
}

/// `true` for a root name usable in a query string: `[a-z0-9_-]{1,64}`.
fn is_valid_root_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
}

fn validate_files(raw: RawFiles, hermes_home: &Path) -> Result<FilesConfig, ConfigError> {
    let roots = match raw.roots {
        // Default: the agent's workspace and the skills tree.
        None => vec![
            FileRoot {
                name: "workspace".into(),
                path: hermes_home.join("workspace"),
                read_only: false,
            },
            FileRoot {
                name: "skills".into(),
                path: hermes_home.join("skills"),
                read_only: true,
            },
        ],
        Some(list) => {
            let mut roots: Vec<FileRoot> = Vec::with_capacity(list.len());
            for (i, r) in list.into_iter().enumerate() {
                let key = format!("files.roots[{i}]");
                if !is_valid_root_name(&r.name) {
                    return Err(invalid(
                        &format!("{key}.name"),
                        "must be 1-64 characters of a-z, 0-9, `-`, `_`",
                    ));
                }
                if roots.iter().any(|x| x.name == r.name) {
                    return Err(invalid(
                        &format!("{key}.name"),
                        format!("`{}` is used twice", r.name),
                    ));
                }
                if !r.path.is_absolute() {
                    return Err(invalid(&format!("{key}.path"), "must be an absolute path"));
                }
                if r.path.parent().is_none() {
                    return Err(invalid(&format!("{key}.path"), "must not be `/`"));
                }
                roots.push(FileRoot {
                    name: r.name,
                    path: r.path,
                    read_only: r.read_only,
                });
            }
            roots
        }
    };
    let preview_bytes = raw.preview_bytes.unwrap_or(1024 * 1024);
    if !(1024..=64 * 1024 * 1024).contains(&preview_bytes) {
        return Err(invalid(
            "files.preview_bytes",
            "must be between 1024 and 67108864",
        ));
    }
    Ok(FilesConfig {
        roots,
        preview_bytes,
    })
}

fn validate_env(raw: RawEnv) -> Result<EnvConfig, ConfigError> {
    let reserved = raw.reserved.map(ListOrCsv::into_vec).unwrap_or_default();
    for name in &reserved {
        // A trailing `*` reserves a prefix.
        let stem = name.strip_suffix('*').unwrap_or(name);
        let ok = !stem.is_empty()
            && stem.len() <= 128
            && stem.as_bytes()[0].is_ascii_uppercase()
            && stem
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(invalid(
                "env.reserved",
                format!("`{name}` is not an env name like `MY_KEY` or a prefix like `MY_*`"),
            ));
        }
    }
    let value_max_bytes = raw.value_max_bytes.unwrap_or(32 * 1024);
    if !(1..=1024 * 1024).contains(&value_max_bytes) {
        return Err(invalid(
            "env.value_max_bytes",
            "must be between 1 and 1048576",
        ));
    }
    Ok(EnvConfig {
        reserved,
        value_max_bytes,
    })
}

fn validate_gateway(
    raw: RawGateway,
    command: Vec<String>,
    hermes_home: PathBuf,
    port: u16,
    data_dir: &Path,
) -> Result<GatewayConfig, ConfigError> {
    let venv = non_empty_path(raw.venv).map(|p| absolute(&p));
    if let Some(v) = &venv {
        if !v.join("bin").is_dir() {
            return Err(invalid(
                "gateway.venv",
                format!("{} has no bin/ directory", v.display()),
            ));
        }
    }
    let workdir = non_empty_path(raw.workdir)
        .map(|p| absolute(&p))
        .unwrap_or_else(|| hermes_home.clone());
    let managed_dir = non_empty_path(raw.managed_dir)
        .map(|p| absolute(&p))
        .unwrap_or_else(|| data_dir.join("gateway-managed"));
    let unhealthy_threshold = raw.unhealthy_threshold.unwrap_or(3);
    if !(1..=1000).contains(&unhealthy_threshold) {
        return Err(invalid(
            "gateway.unhealthy_threshold",
            "must be between 1 and 1000",
        ));
    }
    let backoff_base = duration("gateway.backoff_base", raw.backoff_base, "1s")?;
    let backoff_cap = duration("gateway.backoff_cap", raw.backoff_cap, "5m")?;
    if backoff_cap < backoff_base {
        return Err(invalid(
            "gateway.backoff_cap",
            "must not be shorter than gateway.backoff_base",
        ));
    }
    let crash_loop_count = raw.crash_loop_count.unwrap_or(5);
    if crash_loop_count == 0 {
        return Err(invalid("gateway.crash_loop_count", "must be at least 1"));
    }
    let log_file_bytes = raw.log_file_bytes.unwrap_or(10 * 1024 * 1024);
    if log_file_bytes < 4096 {
        return Err(invalid("gateway.log_file_bytes", "must be at least 4096"));
    }
    let log_files = raw.log_files.unwrap_or(3);
    if !(1..=100).contains(&log_files) {
        return Err(invalid("gateway.log_files", "must be between 1 and 100"));
    }
    Ok(GatewayConfig {
        command,
        hermes_home,
        port,
        start_timeout: duration("gateway.start_timeout", raw.start_timeout, "120s")?,
        stop_grace: duration("gateway.stop_grace", raw.stop_grace, "20s")?,
        venv,
        workdir,
        managed_dir,
        health_interval: duration("gateway.health_interval", raw.health_interval, "5s")?,
        unhealthy_threshold,
        backoff_base,
        backoff_cap,
        backoff_reset: duration("gateway.backoff_reset", raw.backoff_reset, "10m")?,
        crash_loop_window: duration("gateway.crash_loop_window", raw.crash_loop_window, "10m")?,
        crash_loop_count,
        log_file_bytes,
        log_files,
    })
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Split a command line the way a POSIX shell would for plain words, single
/// and double quotes and backslash escapes (no expansion).
pub fn split_command(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => cur.push(ch),
                            Some(ch) => {
                                cur.push('\\');
                                cur.push(ch);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(ch) => cur.push(ch),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(ch) => cur.push(ch),
                    None => return Err("trailing backslash".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if words.is_empty() {
        return Err("is empty".into());
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, env: &[(&str, &str)], dev: bool) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.toml");
        std::fs::write(&file, toml_text).expect("write");
        Config::load_with_env(
            &Source {
                file: Some(file),
                dev,
            },
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn env_overrides_file_with_double_underscore_nesting() {
        let c = load(
            "tenant_id = \"t1\"\n[gateway]\nport = 9000\n",
            &[
                ("HERMES_TENANTD_GATEWAY__PORT", "9100"),
                ("HERMES_TENANTD_GATEWAY__COMMAND", "python3 'my gw.py' --x"),
            ],
            false,
        )
        .expect("valid");
        assert_eq!(c.gateway.port, 9100);
        assert_eq!(c.gateway.command, vec!["python3", "my gw.py", "--x"]);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = load("tenant_id = \"t1\"\n[gateway]\nport = \"x\"\n", &[], false).unwrap_err();
        assert!(e.to_string().contains("gateway.port"), "{e}");
        let e = load(
            "tenant_id = \"t1\"\n[auth]\nrotation_overlap = \"soon\"\n",
            &[],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("auth.rotation_overlap"), "{e}");
        let e = load("tenant_id = \"t1\"\n[listen]\nadr = \"x\"\n", &[], false).unwrap_err();
        assert!(e.to_string().contains("adr"), "{e}");
        let e = load("", &[], false).unwrap_err();
        assert!(e.to_string().contains("tenant_id"), "{e}");
    }

    #[test]
    fn cron_keys_have_defaults_and_are_validated_by_name() {
        let c = load("tenant_id = \"t1\"\n", &[], false).expect("defaults");
        assert_eq!(c.cron.max_jobs, 100);
        assert_eq!(c.cron.min_interval, Duration::from_secs(60));
        assert_eq!(c.cron.missed_grace, Duration::from_secs(600));
        let c = load(
            "tenant_id = \"t1\"\n[cron]\nmissed_grace = \"30s\"\nmax_jobs = 7\n",
            &[("HERMES_TENANTD_CRON__MIN_INTERVAL", "1s")],
            false,
        )
        .expect("set");
        assert_eq!(c.cron.missed_grace, Duration::from_secs(30));
        assert_eq!(c.cron.max_jobs, 7);
        assert_eq!(c.cron.min_interval, Duration::from_secs(1));
        for (text, key) in [
            ("[cron]\nmax_jobs = 0\n", "cron.max_jobs"),
            ("[cron]\nmissed_grace = \"soon\"\n", "cron.missed_grace"),
            (
                "[cron]\ndelivery_backoff_base = \"10m\"\ndelivery_backoff_cap = \"1s\"\n",
                "cron.delivery_backoff_cap",
            ),
            ("[cron]\nbogus = 1\n", "bogus"),
        ] {
            let e = load(&format!("tenant_id = \"t1\"\n{text}"), &[], false).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn gateway_supervision_keys_are_validated_by_name() {
        let c = load(
            "tenant_id = \"t1\"\n[gateway]\nbackoff_base = \"100ms\"\nhealth_interval = \"250ms\"\ncrash_loop_count = 2\n",
            &[("HERMES_TENANTD_GATEWAY__UNHEALTHY_THRESHOLD", "4")],
            false,
        )
        .expect("valid");
        assert_eq!(c.gateway.backoff_base, Duration::from_millis(100));
        assert_eq!(c.gateway.backoff_cap, Duration::from_secs(300));
        assert_eq!(c.gateway.health_interval, Duration::from_millis(250));
        assert_eq!(c.gateway.unhealthy_threshold, 4);
        assert_eq!(c.gateway.crash_loop_count, 2);
        assert_eq!(c.gateway.workdir, c.gateway.hermes_home);
        for (toml_text, key) in [
            (
                "backoff_base = \"10s\"\nbackoff_cap = \"1s\"",
                "gateway.backoff_cap",
            ),
            ("unhealthy_threshold = 0", "gateway.unhealthy_threshold"),
            ("crash_loop_count = 0", "gateway.crash_loop_count"),
            ("health_interval = \"often\"", "gateway.health_interval"),
            ("log_file_bytes = 10", "gateway.log_file_bytes"),
            ("venv = \"/nonexistent/venv\"", "gateway.venv"),
        ] {
            let e = load(
                &format!("tenant_id = \"t1\"\n[gateway]\n{toml_text}\n"),
                &[],
                false,
            )
            .unwrap_err();
            assert!(e.to_string().contains(key), "{toml_text}: {e}");
        }
    }

    #[test]
    fn non_loopback_without_tls_is_refused() {
        let e = load(
            "tenant_id = \"t1\"\n[listen]\naddr = \"0.0.0.0:8643\"\n",
            &[],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("listen.addr"), "{e}");
        assert!(e.to_string().contains("tls"), "{e}");
    }

    #[test]
    fn dev_needs_nothing_but_explicit_values_still_apply() {
        let c = load(
            "",
            &[("HERMES_TENANTD_HUB__URL", "http://127.0.0.1:9")],
            true,
        )
        .expect("valid");
        assert_eq!(c.tenant_id, DEV_TENANT_ID);
        assert!(c.data_dir.ends_with(DEV_DATA_DIR));
        assert_eq!(c.hub.url.as_deref(), Some("http://127.0.0.1:9"));
    }

    #[test]
    fn surface_sections_validate() {
        let c = load(
            "tenant_id = \"t1\"\n[gateway]\nhermes_home = \"/h\"\n",
            &[],
            false,
        )
        .expect("valid");
        let names: Vec<&str> = c.files.roots.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["workspace", "skills"]);
        assert_eq!(c.files.roots[1].path, PathBuf::from("/h/skills"));
        let e = load(
            "tenant_id = \"t1\"\n[[files.roots]]\nname = \"a\"\npath = \"rel\"\n",
            &[],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("files.roots[0].path"), "{e}");
        let e = load(
            "tenant_id = \"t1\"\n[[files.roots]]\nname = \"A B\"\npath = \"/x\"\n",
            &[],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("files.roots[0].name"), "{e}");
        let c = load(
            "tenant_id = \"t1\"\n",
            &[("HERMES_TENANTD_ENV__RESERVED", "OPENAI_API_KEY, CORP_*")],
            false,
        )
        .expect("valid");
        assert_eq!(c.env.reserved, vec!["OPENAI_API_KEY", "CORP_*"]);
        let e = load(
            "tenant_id = \"t1\"\n[env]\nreserved = [\"lower\"]\n",
            &[],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("env.reserved"), "{e}");
        let e = load(
            "tenant_id = \"t1\"\n[skills]\ndebounce = \"1h\"\n",
            &[],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("skills.debounce"), "{e}");
    }

    #[test]
    fn split_command_handles_quotes() {
        assert_eq!(
            split_command(r#"a "b c" d\ e 'f"g'"#).expect("ok"),
            vec!["a", "b c", "d e", "f\"g"]
        );
        assert!(split_command("a 'b").is_err());
        assert!(split_command("  ").is_err());
    }
}
