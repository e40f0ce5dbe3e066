//! Raw values to typed, checked ones; every refusal names its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::*;
use super::*;

pub(super) fn duration(
    key: &str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
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

pub(super) fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

pub(super) fn non_empty_path(v: Option<PathBuf>) -> Option<PathBuf> {
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

pub(super) fn validate(
    raw: Raw,
    dev: bool,
    credentials_dir: Option<&Path>,
) -> Result<Config, ConfigError> {
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

    // Unset: systemd's credential when the unit delivers one
    // (LoadCredential=), else the production file, or the dev data dir.
    let credential_file =
        non_empty_path(raw.auth.credential_file).unwrap_or_else(|| match credentials_dir {
            Some(d) => d.join(SYSTEMD_CREDENTIAL_NAME),
            None if dev => data_dir.join("credential"),
            None => PathBuf::from("/etc/hermes-tenantd/credential"),
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
    // `--dev`: the agent `scripts/dev-agent` installed, when it is there.
    if dev && non_empty_path(gw.venv.clone()).is_none() {
        let venv = data_dir.join(super::DEV_AGENT_VENV);
        if venv.join("bin").is_dir() {
            gw.venv = Some(venv);
        }
    }
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
        stop_wait_for_runs: duration("hub.stop_wait_for_runs", raw.hub.stop_wait_for_runs, "10m")?,
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
    let max_connections = raw.limits.max_connections.unwrap_or(1024);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(invalid(
            "limits.max_connections",
            "must be between 1 and 1000000",
        ));
    }
    let http2_max_streams = raw.limits.http2_max_streams.unwrap_or(64);
    if !(1..=10_000).contains(&http2_max_streams) {
        return Err(invalid(
            "limits.http2_max_streams",
            "must be between 1 and 10000",
        ));
    }
    let limits = LimitsConfig {
        body_bytes,
        request_timeout: duration("limits.request_timeout", raw.limits.request_timeout, "30s")?,
        concurrency,
        page_size_max,
        header_read_timeout: duration(
            "limits.header_read_timeout",
            raw.limits.header_read_timeout,
            "10s",
        )?,
        idle_timeout: duration("limits.idle_timeout", raw.limits.idle_timeout, "60s")?,
        tls_handshake_timeout: duration(
            "limits.tls_handshake_timeout",
            raw.limits.tls_handshake_timeout,
            "10s",
        )?,
        max_connections,
        http2_max_streams,
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

    let releases = super::releases::validate(raw.releases, &data_dir)?;

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
        releases,
    })
}

pub(super) fn http_url(key: &str, u: String) -> Result<String, ConfigError> {
    let parsed =
        reqwest::Url::parse(&u).map_err(|e| invalid(key, format!("`{u}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(invalid(key, "must be an http(s) URL"));
    }
    Ok(u)
}

/// `true` for a root name usable in a query string: `[a-z0-9_-]{1,64}`.
pub(super) fn is_valid_root_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
}

pub(super) fn validate_files(
    raw: RawFiles,
    hermes_home: &Path,
) -> Result<FilesConfig, ConfigError> {
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

pub(super) fn validate_env(raw: RawEnv) -> Result<EnvConfig, ConfigError> {
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

pub(super) fn validate_gateway(
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
    let identity = super::agent::identity(raw.user, raw.group)?;
    if identity.is_separate() && managed_dir.starts_with(data_dir) {
        return Err(invalid(
            "gateway.managed_dir",
            "must be outside data_dir when the agent runs as another user (data_dir is private to the daemon; the agent must read the managed scope)",
        ));
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
        identity,
        limits: super::agent::limits(raw.memory_max, raw.tasks_max, raw.cpu_weight)?,
    })
}

pub(super) fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
