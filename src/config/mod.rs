//! Configuration: a TOML file, overridden key by key by `HERMES_TENANTD_*`
//! environment variables (`__` nests), validated once into typed values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "HERMES_TENANTD_";
/// Production location of the configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/hermes-tenantd/config.toml";
/// Tenant id used by `--dev` when none is configured.
pub const DEV_TENANT_ID: &str = "dev-tenant";
/// Set by systemd for a unit with `LoadCredential=`.
pub const SYSTEMD_CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";
/// Name of the tenant-runtime credential in that directory.
pub const SYSTEMD_CREDENTIAL_NAME: &str = "tenant-runtime";
/// Data directory used by `--dev` when none is configured.
pub const DEV_DATA_DIR: &str = ".tenantd-dev";
/// The virtualenv `scripts/dev-agent` installs hermes-agent into, under
/// the data directory; `--dev` uses it as `gateway.venv` when it exists.
pub const DEV_AGENT_VENV: &str = "agent-venv";

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
    pub releases: ReleasesConfig,
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
    /// The agent's user and group (`gateway.user`, `gateway.group`).
    pub identity: crate::identity::AgentIdentity,
    /// The agent cgroup's limits (`gateway.memory_max`, `tasks_max`, `cpu_weight`).
    pub limits: AgentLimits,
}

/// Limits of the agent's cgroup; the daemon's own cgroup is never limited
/// by them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLimits {
    pub memory_max: MemoryMax,
    /// `pids.max`: processes and threads of the gateway and its tools.
    pub tasks_max: u64,
    /// `cpu.weight` (1-10000) against the daemon's own cgroup.
    pub cpu_weight: u32,
}

/// `memory.max` of the agent's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMax {
    /// No limit.
    Unlimited,
    Bytes(u64),
    /// Percent of the machine's memory, resolved when the cgroup is set up.
    Percent(u8),
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
    /// How long a stop the hub decides waits for the runs in flight.
    pub stop_wait_for_runs: Duration,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub body_bytes: usize,
    pub request_timeout: Duration,
    pub concurrency: usize,
    pub page_size_max: u32,
    /// From accepting a connection (or finishing the last request on it)
    /// to having the next request's head.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// Open connections per listener, before the file-descriptor clamp.
    pub max_connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub http2_max_streams: u32,
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
        let env: Vec<(String, String)> = env.into_iter().collect();
        // systemd's LoadCredential= directory (production delivers the
        // credential there).
        let credentials_dir = env
            .iter()
            .find(|(k, v)| k == SYSTEMD_CREDENTIALS_ENV && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v));
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
        validate(raw, source.dev, credentials_dir.as_deref())
    }
}

mod agent;
mod command;
mod releases;
pub use releases::ReleasesConfig;
mod raw;
mod validate;

pub use command::split_command;
use raw::{Raw, apply_env};
pub use validate::is_valid_tenant_id;
use validate::validate;

#[cfg(test)]
mod tests;
