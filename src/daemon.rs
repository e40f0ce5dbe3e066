//! Start-up and shutdown in one place: open the store, load the credential,
//! bind the listeners, start the long-running components, and stop them in
//! reverse order on one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppParts, AppState};
use crate::auth::{self, Credentials};
use crate::config::Config;
use crate::hub::{self, HubLink};
use crate::metrics::Metrics;
use crate::runs::{GatewayClient, RunLimits, Runs};
use crate::store::{Store, StoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Credential(#[from] auth::CredentialError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("start-up task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("cron: {0}")]
    Cron(#[from] crate::cron::CronError),
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::SupervisorError),
    #[error(transparent)]
    Hub(#[from] crate::hub::client::ClientError),
    #[error("cannot build the gateway client: {0}")]
    GatewayClient(#[source] reqwest::Error),
    #[error("agent policy and connections: {0}")]
    AgentConfig(#[source] crate::policy::PolicyError),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A running daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub state: AppState,
    cancel: CancellationToken,
    servers: Vec<JoinHandle<()>>,
    components: Vec<JoinHandle<()>>,
}

/// How long open connections (streams) get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);
/// How long a store connection stays unused before its memory is given
/// back (`Store::release_idle`): long enough that a client's burst of
/// requests keeps its caches, short enough that an idle daemon is small.
const STORE_IDLE: Duration = Duration::from_secs(5);

impl Daemon {
    /// Bring everything up. Returns once the listeners accept connections.
    pub async fn start(config: Config) -> Result<Daemon, StartError> {
        crate::allocator::limit_arenas();
        let config = Arc::new(config);
        // Before anything touches the agent's files (see `identity`).
        crate::identity::set_agent(config.gateway.identity.clone());
        let data_dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || create_private_dir(&data_dir)).await??;
        sweep_temps(&config);

        if config.dev {
            let path = config.auth.credential_file.clone();
            tokio::task::spawn_blocking(move || auth::ensure_generated(&path)).await??;
        }
        let (cred, overlap, state) = (
            config.auth.credential_file.clone(),
            config.auth.rotation_overlap,
            config.data_dir.join(auth::CREDENTIAL_STATE_FILE),
        );
        let credentials = Arc::new(
            tokio::task::spawn_blocking(move || {
                Credentials::load_with_state(&cred, overlap, Some(&state))
            })
            .await??,
        );

        let db_path = config.data_dir.join("tenantd.db");
        let opts = StoreOptions {
            synchronous: config.store.synchronous,
            readers: config.store.readers,
        };
        let store =
            tokio::task::spawn_blocking(move || Store::open_blocking(&db_path, &opts)).await??;

        let hub_link = HubLink::load(&store).await?;
        // Before the supervisor starts anything: an agent release switch a
        // killed daemon left is rolled back (see `releases::recover`).
        crate::releases::recover::recover(&store, &config).await?;
        // One `.env` (one lock) for the API, env_apply and the supervisor,
        // which checks it before every spawn.
        let env_file = Arc::new(crate::envfile::EnvFile::new(
            &config.gateway.hermes_home,
            config.env.reserved.clone(),
            config.env.value_max_bytes,
        ));
        let (agent, supervisor) = crate::supervisor::Supervisor::prepare(
            config.clone(),
            store.clone(),
            hub_link.access() == crate::hub::Access::Suspended,
            env_file.clone(),
        )
        .await?;
        let cancel = CancellationToken::new();
        let gateway = GatewayClient::new(agent.endpoint().clone(), agent.gate())
            .map_err(StartError::GatewayClient)?;
        let runs = Runs::new(
            store.clone(),
            agent.clone(),
            gateway.clone(),
            RunLimits {
                max_input_bytes: config.runs.max_input_bytes,
                subscribers_per_run: config.runs.subscribers_per_run,
                subscribers_total: config.runs.subscribers_total,
                queue_depth: config.runs.queue_depth,
                retention: config.runs.retention,
                keepalive: config.runs.keepalive,
                wake_timeout: config.gateway.start_timeout + Duration::from_secs(5),
            },
            hub_link.suspended(),
            hub_link.hub_stopping(),
            cancel.clone(),
        );
        runs.recover().await?;
        {
            let runs = runs.clone();
            hub_link.set_open_runs_source(move || runs.open_runs() as u64);
        }
        let ops = crate::ops::Ops::new(
            hub_link.clone(),
            runs.clone(),
            store.clone(),
            &config,
            cancel.clone(),
        );
        hub_link.set_ops(ops.clone());
        let metrics = Arc::new(Metrics::new());
        // The one client for every call to the hub (heartbeats, deliveries).
        let hub_client =
            hub::client::HubClient::new(&config.hub, &config.tenant_id, credentials.clone())
                .await?;
        let cron = crate::cron::CronService::new(
            store.clone(),
            runs.clone(),
            metrics.clone(),
            config.cron.clone(),
            hub_client.clone(),
            Arc::new(crate::cron::SystemClock),
            cancel.clone(),
        );
        cron.prepare(config.gateway.hermes_home.clone()).await?;
        let (env_apply, env_apply_task) = crate::env_apply::EnvApply::start(
            agent.clone(),
            runs.clone(),
            hub_link.clone(),
            config.hub.stop_wait_for_runs,
            cancel.clone(),
        );
        let (releases, releases_task) = crate::releases::Releases::start(
            config.releases.clone(),
            store.clone(),
            agent.clone(),
            hub_link.clone(),
            config.hub.stop_wait_for_runs,
            gateway,
            cancel.clone(),
        );
        let hermes_config = Arc::new(crate::settings::HermesConfig::new(
            &config.gateway.hermes_home,
        ));
        // The hub's policy and connections: the managed config.yaml is
        // made to match the store before the gateway starts.
        let (agent_config, agent_config_tasks) = crate::policy::AgentConfig::start(
            store.clone(),
            hermes_config.clone(),
            config.gateway.hermes_home.clone(),
            config.gateway.managed_dir.clone(),
            config
                .gateway
                .identity
                .is_separate()
                .then_some(config.gateway.identity.gid),
            agent.clone(),
            hub_link.clone(),
            config.hub.stop_wait_for_runs,
            {
                let env_file = env_file.clone();
                Box::new(move |name: &str| env_file.is_reserved(name))
            },
            cancel.clone(),
        )
        .await
        .map_err(StartError::AgentConfig)?;
        let state = AppState::new(AppParts {
            releases: releases.clone(),
            runs: runs.clone(),
            cron: cron.clone(),
            agent: agent.clone(),
            config: config.clone(),
            store: store.clone(),
            credentials: credentials.clone(),
            metrics,
            inflight: Arc::new(Semaphore::new(config.limits.concurrency)),
            hub: hub_link.clone(),
            files: Arc::new(crate::files::FileRoots::from_config(&config)),
            env_file,
            hermes_config,
            agent_config,
            skills_status: Arc::new(crate::skills::IndexStatus::default()),
            env_apply,
            ops: ops.clone(),
        });
        // A reserved key in the tenant's .env would override what the
        // platform sets: drop it before the agent starts.
        if let Err(e) = state.env_file.sanitize().await {
            tracing::warn!(error = %e, "cannot check the Hermes .env for reserved keys");
        }

        let mut components = Vec::new();
        // Before the gateway starts: its output is redacted from the first line.
        components
            .push(crate::ops::learn_env_secrets(state.env_file.clone(), cancel.clone()).await);
        components.push(credentials.watch(cancel.clone(), Duration::from_secs(30)));
        // A reserved key the agent writes while the gateway runs is removed
        // at once, and a gateway that may have read it restarted when idle.
        components.push(crate::envfile::guard::spawn(
            state.env_file.clone(),
            {
                let env_apply = state.env_apply.clone();
                Box::new(move || env_apply.changed())
            },
            cancel.clone(),
        ));
        // Stops the gateway (planned stop, grace, SIGKILL) when cancelled.
        components.push(supervisor.start(cancel.clone()));

        components.push(hub::uptime::spawn(
            &agent,
            store.clone(),
            state.metrics.clone(),
            cancel.clone(),
        ));
        if let Some(client) = hub_client {
            let deps = hub::heartbeat::Deps {
                config: config.clone(),
                store: store.clone(),
                agent: agent.clone(),
                link: hub_link,
                metrics: state.metrics.clone(),
                credentials: credentials.clone(),
                releases: Some(releases),
            };
            let hb = hub::heartbeat::Heartbeat::with_client(deps, client);
            components.push(hb.spawn(cancel.clone()));
        }
        components.push(crate::skills::watcher::start(
            store.clone(),
            config.gateway.hermes_home.join("skills"),
            config.skills.clone(),
            state.skills_status.clone(),
            cancel.clone(),
        ));

        let listener = bind(config.listen.addr).await?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen.addr,
            source,
        })?;
        let mut servers = Vec::new();
        let tls = match &config.listen.tls {
            Some(files) => Some(crate::tls::server_config(&files.cert, &files.key).await?),
            None => None,
        };
        // One connection budget for both listeners (file descriptors).
        let hygiene = crate::listener::Hygiene::new(&config.limits);
        // Said once, so an operator sees when RLIMIT_NOFILE lowered it.
        tracing::info!(
            max_connections = hygiene.max_connections(),
            configured = config.limits.max_connections,
            "connection cap"
        );
        servers.push(serve(
            listener,
            api::router(state.clone()),
            tls,
            hygiene.clone(),
            cancel.clone(),
        ));

        let metrics_addr = match config.listen.metrics_addr {
            Some(a) => {
                let l = bind(a).await?;
                let bound = l
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr: a, source })?;
                servers.push(serve(
                    l,
                    api::metrics_router(state.clone()),
                    None,
                    hygiene.clone(),
                    cancel.clone(),
                ));
                Some(bound)
            }
            None => None,
        };

        components.push(env_apply_task);
        components.push(releases_task);
        components.push(
            crate::ops::control::spawn(&config.data_dir, ops.drain.clone(), cancel.clone())
                .await
                .map_err(|source| StartError::DataDir {
                    path: config.data_dir.join(crate::ops::control::SOCKET),
                    source,
                })?,
        );
        components.extend(agent_config_tasks);
        components.push(watchdog(store.clone(), cancel.clone()));
        components.push(crate::allocator::spawn_trim(
            {
                let store = store.clone();
                move || {
                    store.release_idle(STORE_IDLE);
                }
            },
            cancel.clone(),
        ));
        components.push(prune_runs(runs, cancel.clone()));
        components.push(merge_search_index(store.clone(), cancel.clone()));
        components.extend(cron.spawn());
        components.push(crate::history_sync::spawn(
            store.clone(),
            config.gateway.hermes_home.clone(),
            config.runs.history_sync_interval,
            cancel.clone(),
        ));
        tracing::info!(
            %addr,
            tls = config.listen.tls.is_some(),
            tenant_id = %config.tenant_id,
            schema_version = store.schema_version(),
            "listening"
        );
        Ok(Daemon {
            addr,
            metrics_addr,
            state,
            cancel,
            servers,
            components,
        })
    }

    /// A token that stops the daemon when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Wait for the runs in flight (at most `gateway.stop_grace`, new
    /// runs refused meanwhile), stop accepting, drain the connections,
    /// stop components (the gateway last), checkpoint the store.
    pub async fn shutdown(self) {
        // A planned stop cuts no run that can finish within the grace:
        // the API keeps serving (the run's event streams) until then.
        self.state
            .ops
            .drain
            .before_stop(self.state.config.gateway.stop_grace)
            .await;
        self.cancel.cancel();
        for mut s in self.servers {
            if tokio::time::timeout(DRAIN, &mut s).await.is_err() {
                tracing::warn!("connections still open after the drain period; closing them");
                s.abort();
            }
        }
        for c in self.components {
            let _ = c.await;
        }
        if let Err(e) = self.state.store.checkpoint().await {
            tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
        }
        tracing::info!("stopped");
    }
}

fn create_private_dir(path: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| StartError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    let mode = std::fs::metadata(path).map_err(err)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    hygiene: crate::listener::Hygiene,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let tls = tls.map(|cfg| tokio_rustls::TlsAcceptor::from(cfg.get_inner()));
    tokio::spawn(crate::listener::serve(listener, app, tls, hygiene, cancel))
}

/// Delete finished runs past their retention, hourly.
fn prune_runs(runs: Arc<Runs>, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match runs.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(runs = n, "pruned finished runs past retention"),
                Err(e) => tracing::warn!(error = %e, "cannot prune runs"),
            }
        }
    })
}

/// Hourly (the first an hour after start): when the message search index
/// has more than `search_index::SEGMENTS_MAX` segments, merge them into one,
/// one bounded write transaction per step, so an append waits one step at
/// most (the writer lock is fair).
fn merge_search_index(store: Store, cancel: CancellationToken) -> JoinHandle<()> {
    use crate::store::search_index;
    tokio::spawn(async move {
        let period = Duration::from_secs(3600);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let before = match store.read(search_index::segments).await {
                Ok(n) if n > search_index::SEGMENTS_MAX => n,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the search index's segments");
                    continue;
                }
            };
            let started = std::time::Instant::now();
            let (mut steps, mut longest) = (0usize, Duration::ZERO);
            while steps < search_index::MAX_STEPS && !cancel.is_cancelled() {
                let step = std::time::Instant::now();
                match store.write(|c| search_index::merge_step(c)).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot merge the search index");
                        break;
                    }
                }
                steps += 1;
                longest = longest.max(step.elapsed());
            }
            tracing::info!(
                segments_before = before,
                steps,
                seconds = started.elapsed().as_secs_f64(),
                longest_step_ms = longest.as_secs_f64() * 1000.0,
                "merged the message search index"
            );
        }
    })
}

/// `WATCHDOG=1` to systemd while the store answers; no-op outside systemd.
fn watchdog(store: Store, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut usec = 0u64;
        if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
            return;
        }
        let period = Duration::from_micros(usec / 2);
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match tokio::time::timeout(period, store.ping()).await {
                Ok(Ok(())) => {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
                _ => tracing::warn!("store does not answer; withholding the systemd watchdog ping"),
            }
        }
    })
}

/// How old a leftover temp file of the one atomic write must be before it
/// is removed at start-up (a younger one may be another process's write).
const STALE_TEMP: Duration = Duration::from_secs(600);

/// Remove what writes cut by a crash left behind (`.tenantd-tmp-*`) in the
/// directories the daemon writes into: its own (data dir, managed scope)
/// with its rights, the Hermes home and its `cron/` as the agent. In the
/// background: a start never waits for it, and a failure is one log line.
fn sweep_temps(config: &Config) {
    use crate::dir_handle::DirHandle;
    let own = [config.data_dir.clone(), config.gateway.managed_dir.clone()];
    let home = config.gateway.hermes_home.clone();
    let sweep = |dir: &std::path::Path,
                 open: fn(&std::path::Path) -> std::io::Result<DirHandle>| {
        match open(dir).and_then(|h| h.sweep_temps(STALE_TEMP, 10_000)) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(dir = %dir.display(), removed = n, "removed temp files left by an interrupted write")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot sweep leftover temp files")
            }
        }
    };
    tokio::task::spawn_blocking(move || {
        for dir in &own {
            sweep(dir, DirHandle::open);
        }
    });
    crate::identity::spawn_as_agent(move || {
        sweep(&home, DirHandle::open_home);
        match DirHandle::open_home(&home).and_then(|h| h.open_dir(std::path::Path::new("cron"))) {
            Ok(cron) => {
                if let Err(e) = cron.sweep_temps(STALE_TEMP, 10_000) {
                    tracing::warn!(error = %e, "cannot sweep leftover temp files in the Hermes home's cron/");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the Hermes home's cron/ to sweep temp files")
            }
        }
    });
}
