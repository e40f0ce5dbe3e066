//! What a spawn needs, prepared off the state loop: the resolved command,
//! the environment, the managed scope, the agent's identity and an empty
//! cgroup to start in. Also the agent-side file chores around a spawn
//! (planned-stop marker, configuration fingerprint). Blocking unless async.

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::{Machine, cgroup, managed, process};
use crate::config::GatewayConfig;
use crate::identity::as_agent;

/// Arguments of `hermes` when `gateway.command` names another program.
const HERMES_ARGS: [&str; 3] = ["gateway", "run", "--external-supervisor"];
/// Whether the gateway command resolves (`venv/bin`, then `PATH`). Blocking.
pub(super) fn command_found(cfg: &GatewayConfig) -> bool {
    cfg.command
        .first()
        .is_some_and(|name| process::resolve_program(name, cfg.venv.as_deref()).is_some())
}

/// Resolve the command and write the managed scope. Blocking.
pub(super) fn prepare_spawn(
    cfg: &GatewayConfig,
    key: &str,
    releases: &crate::releases::Layout,
) -> Result<process::SpawnSpec, String> {
    let name = cfg
        .command
        .first()
        .ok_or_else(|| "gateway.command is empty".to_owned())?;
    // An active agent release wins over gateway.venv/command: its own
    // `bin/hermes`, never one found on PATH. Resolved to its real
    // directory now, so a later switch never moves a running gateway.
    let release = releases.current_venv();
    let (program, args, venv) = match release {
        Some((version, dir)) => {
            let hermes = dir.join("bin/hermes");
            if !process::is_executable(&hermes) {
                return Err(format!("agent release {version} has no bin/hermes"));
            }
            let args = if std::path::Path::new(name).file_name() == Some("hermes".as_ref()) {
                cfg.command[1..].to_vec()
            } else {
                HERMES_ARGS.iter().map(|a| (*a).to_owned()).collect()
            };
            (hermes, args, Some(dir))
        }
        None => {
            let program = process::resolve_program(name, cfg.venv.as_deref()).ok_or_else(|| {
                format!("gateway command `{name}` not found (set gateway.command or gateway.venv)")
            })?;
            (program, cfg.command[1..].to_vec(), cfg.venv.clone())
        }
    };
    // Created if missing (the planned-stop marker goes there), as the agent
    // (it is the agent's directory); an existing home keeps its permissions.
    as_agent(|| std::fs::create_dir_all(&cfg.hermes_home))
        .map_err(|e| format!("cannot create the Hermes home: {e}"))?;
    let agent = &cfg.identity;
    let reader_gid = agent.is_separate().then_some(agent.gid);
    managed::write_managed_env(&cfg.managed_dir, cfg.port, key, reader_gid)
        .map_err(|e| format!("cannot write the managed scope: {e}"))?;
    let mut env = vec![
        (
            "HERMES_HOME".to_owned(),
            cfg.hermes_home.display().to_string(),
        ),
        (
            "HERMES_MANAGED_DIR".to_owned(),
            cfg.managed_dir.display().to_string(),
        ),
        (
            "HERMES_GATEWAY_EXTERNAL_SUPERVISOR".to_owned(),
            "1".to_owned(),
        ),
        ("PYTHONUNBUFFERED".to_owned(), "1".to_owned()),
        // See `managed::write_managed_env`: the daemon's backoff only.
        ("HERMES_GATEWAY_MAX_STARTS".to_owned(), "0".to_owned()),
        // See `managed::write_managed_env`: no container-mode re-exec.
        ("HERMES_DEV".to_owned(), "1".to_owned()),
        ("API_SERVER_ENABLED".to_owned(), "true".to_owned()),
        ("API_SERVER_HOST".to_owned(), "127.0.0.1".to_owned()),
        ("API_SERVER_PORT".to_owned(), cfg.port.to_string()),
        ("API_SERVER_KEY".to_owned(), key.to_owned()),
    ];
    if agent.is_separate() {
        // The agent's own account, not the daemon's.
        // Never the daemon's HOME. An id without an account: the directory
        // holding the Hermes home when it is the usual `~/.hermes`.
        let home = agent.home.clone().unwrap_or_else(|| {
            match (cfg.hermes_home.file_name(), cfg.hermes_home.parent()) {
                (Some(n), Some(p)) if n == ".hermes" => p.to_path_buf(),
                _ => cfg.hermes_home.clone(),
            }
        });
        env.push(("HOME".to_owned(), home.display().to_string()));
        if let Some(name) = &agent.name {
            env.push(("USER".to_owned(), name.clone()));
            env.push(("LOGNAME".to_owned(), name.clone()));
        }
    }
    if let Some(venv) = &venv {
        env.push(("VIRTUAL_ENV".to_owned(), venv.display().to_string()));
        let mut paths = vec![venv.join("bin")];
        if let Some(p) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&p));
        }
        if let Ok(joined) = std::env::join_paths(paths) {
            env.push(("PATH".to_owned(), joined.to_string_lossy().into_owned()));
        }
    }
    Ok(process::SpawnSpec {
        program,
        args,
        env,
        remove_prefixes: vec![crate::config::ENV_PREFIX.to_owned()],
        run_as: agent.is_separate().then_some((agent.uid, agent.gid)),
        workdir: if as_agent(|| cfg.workdir.is_dir()) {
            cfg.workdir.clone()
        } else {
            cfg.hermes_home.clone()
        },
    })
}

/// `true` when something listens on the gateway's port (read from `/proc`:
/// nothing is sent to it, not even a connection).
pub(super) async fn port_in_use(port: u16) -> bool {
    super::gateway_socket::port_held(port).await
}

/// Modification time and size of the files whose change lifts a `config`
/// failure: the tenant's `.env` and `config.yaml`, the managed `config.yaml`.
pub(super) async fn config_fingerprint(cfg: &GatewayConfig) -> Vec<Option<(i64, u64)>> {
    let files = [
        cfg.hermes_home.join(".env"),
        cfg.hermes_home.join("config.yaml"),
        cfg.managed_dir.join("config.yaml"),
    ];
    tokio::task::spawn_blocking(move || {
        as_agent(|| {
            files
                .iter()
                .map(|f| {
                    std::fs::metadata(f).ok().map(|m| {
                        use std::os::unix::fs::MetadataExt;
                        (m.mtime_nsec() + m.mtime() * 1_000_000_000, m.len())
                    })
                })
                .collect()
        })
    })
    .await
    .unwrap_or_default()
}

/// Remove the planned-stop marker (as the agent: it is in the agent's home).
pub(super) async fn remove_planned_stop(cfg: &GatewayConfig) {
    let home = cfg.hermes_home.clone();
    let _ =
        tokio::task::spawn_blocking(move || as_agent(|| process::remove_planned_stop(&home))).await;
}

/// Make sure the agent's cgroup is empty (what a previous gateway left,
/// e.g. a detached process still dying, is killed) and open its
/// `cgroup.procs` for the child to enter. Blocking.
pub(super) fn enter_empty_cgroup(cg: &cgroup::AgentCgroup) -> Result<OwnedFd, String> {
    if cg.populated() {
        tracing::warn!(pids = ?cg.procs(), "agent cgroup not empty before a spawn; killing what is left");
        let _ = cg.kill_all();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while cg.populated() {
            if std::time::Instant::now() >= deadline {
                return Err("processes of the previous gateway survive cgroup.kill; not starting a second one".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    cg.procs_for_spawn()
        .map_err(|e| format!("cannot open the agent cgroup: {e}"))
}

/// One line at start: how the agent is contained.
pub(super) fn log_containment(c: &cgroup::Containment) {
    match c {
        cgroup::Containment::Cgroup(cg) if cg.not_enforced.is_empty() => {
            tracing::info!(cgroup = %cg.path.display(), limits = ?cg.applied, "agent runs in its own cgroup");
        }
        cgroup::Containment::Cgroup(cg) => {
            tracing::warn!(
                cgroup = %cg.path.display(),
                applied = ?cg.applied,
                not_enforced = ?cg.not_enforced,
                "agent runs in its own cgroup (stopped with cgroup.kill), but some limits are not enforced: the controllers are not delegated"
            );
        }
        cgroup::Containment::ProcessGroup { reason } => {
            tracing::warn!(
                reason = %reason,
                "agent limits are not enforced and detached agent processes can outlive a restart: no delegated cgroup; using process groups"
            );
        }
    }
}

impl Machine {
    /// SIGKILL everything left in the agent's cgroup (no-op without one).
    pub(super) async fn kill_cgroup(&self) {
        let containment = self.containment.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(cg) = containment.cgroup() {
                if let Err(e) = cg.kill_all() {
                    tracing::warn!(error = %e, "cannot kill the agent cgroup");
                }
            }
        })
        .await;
    }
}

/// Kill the agent's cgroup from a synchronous path (the stop timer): fire
/// and forget on the blocking pool.
pub(super) fn kill_cgroup_detached(containment: std::sync::Arc<cgroup::Containment>) {
    tokio::task::spawn_blocking(move || {
        if let Some(cg) = containment.cgroup() {
            let _ = cg.kill_all();
        }
    });
}
