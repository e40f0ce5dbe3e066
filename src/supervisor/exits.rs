//! What a gateway exit means: after a planned stop, the next step the stop
//! asked for; otherwise exit 75 (restart now), 78 (configuration: wait for
//! it to change) or a crash (backoff, or `failed` on a crash loop).

use std::process::ExitStatus;

use tokio::time::Instant;

use super::*;

impl Machine {
    // ---- exits ------------------------------------------------------------------

    pub(super) async fn on_exit(&mut self, result: std::io::Result<ExitStatus>) {
        let Some(child) = self.child.take() else {
            return;
        };
        let (code, signal) = match &result {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                (s.code(), s.signal())
            }
            Err(e) => {
                tracing::error!(error = %e, "waiting for the gateway failed");
                (None, None)
            }
        };
        // Tool subprocesses of the dead gateway go with it, detached ones
        // (own session or group) too when the agent has its cgroup.
        process::signal_group(child.pid, libc::SIGKILL);
        self.kill_cgroup().await;
        self.persist_process(None);
        self.generation += 1;
        self.probe_inflight = false;
        self.status.pid = None;
        self.status.running_since_ms = None;
        let extra = TransitionExtra {
            pid: Some(child.pid),
            exit_code: code,
            signal,
            ..Default::default()
        };
        let now = Instant::now();
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        if let Phase::Stopping { then, cause, .. } = phase {
            remove_planned_stop(&self.cfg).await;
            let why = match then {
                After::Retry(r) => r,
                _ => "planned",
            };
            self.status.last_exit = Some(last_exit(why, code, signal));
            match then {
                After::Idle => self.transition(AgentState::Stopped, cause, extra),
                After::Exit => {
                    self.transition(AgentState::Stopped, "daemon_shutdown", extra);
                }
                After::Respawn => {
                    self.transition(AgentState::Stopped, cause, extra);
                    self.spawn_now("restart").await;
                }
                After::Retry(reason) => self.retry_later(reason, extra, now),
            }
            return;
        }
        match code {
            Some(EXIT_RESTART) => {
                self.status.last_exit = Some(last_exit("restart_request", code, signal));
                if self.crashes.record(now) {
                    self.crash_loop("restart_request", extra);
                } else {
                    // A restart request: at once, no backoff step.
                    self.transition(AgentState::Stopped, "restart_request", extra);
                    self.spawn_now("restart_request").await;
                }
            }
            Some(EXIT_CONFIG) => {
                self.status.last_exit = Some(last_exit("config", code, signal));
                self.status.last_error = Some(
                    "the gateway reported a fatal configuration error (exit 78); fix the configuration or start it again"
                        .into(),
                );
                let fingerprint = config_fingerprint(&self.cfg).await;
                self.phase = Phase::ConfigFailed {
                    fingerprint,
                    next_check: now + self.cfg.health_interval,
                };
                self.transition(AgentState::Failed, "config", extra);
            }
            _ => {
                self.status.last_exit = Some(last_exit("crash", code, signal));
                self.status.last_error = Some(match (code, signal) {
                    (_, Some(s)) => format!("the gateway was killed by signal {s}"),
                    (Some(c), _) => format!("the gateway exited with code {c}"),
                    _ => "the gateway ended".into(),
                });
                self.retry_later("crash", extra, now);
            }
        }
    }

    /// After an unplanned end: `backoff`, or `failed` on a crash loop.
    pub(super) fn retry_later(
        &mut self,
        reason: &'static str,
        mut extra: TransitionExtra,
        now: Instant,
    ) {
        if self.crashes.record(now) {
            return self.crash_loop(reason, extra);
        }
        let delay = self.backoff.next_delay();
        extra.delay = Some(delay);
        extra.detail.get_or_insert_with(|| reason.to_owned());
        self.phase = Phase::Waiting { until: now + delay };
        self.transition(AgentState::Backoff, reason, extra);
    }

    pub(super) fn crash_loop(&mut self, cause: &'static str, mut extra: TransitionExtra) {
        let delay = self.backoff.cap();
        extra.delay = Some(delay);
        extra.detail.get_or_insert_with(|| cause.to_owned());
        self.status.last_error = Some(format!(
            "more than {} restarts within {}; retrying every {}",
            self.cfg.crash_loop_count,
            humantime::format_duration(self.cfg.crash_loop_window),
            humantime::format_duration(delay)
        ));
        self.phase = Phase::Waiting {
            until: Instant::now() + delay,
        };
        self.transition(AgentState::Failed, "crash_loop", extra);
    }
}
