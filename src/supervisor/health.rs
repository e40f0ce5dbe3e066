//! The timer side of the state machine: start deadline, readiness polls,
//! periodic `/health` probes, the stop grace and SIGKILL stage, backoff
//! retries, and the configuration watch after an exit 78; and the probe
//! results that come back.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

impl Machine {
    // ---- timers and probes ----------------------------------------------------------

    pub(super) async fn on_timer(&mut self) {
        let now = Instant::now();
        match &mut self.phase {
            Phase::Idle => {}
            Phase::Starting {
                deadline,
                next_poll,
            } => {
                if now >= *deadline {
                    let timeout = self.cfg.start_timeout;
                    self.status.last_error = Some(format!(
                        "the gateway did not answer /health within {}",
                        humantime::format_duration(timeout)
                    ));
                    self.begin_stop(After::Retry("start_timeout"), "start_timeout")
                        .await;
                } else if now >= *next_poll && !self.probe_inflight {
                    *next_poll = now + READY_POLL;
                    self.launch_health(READY_POLL.max(Duration::from_millis(500)));
                }
            }
            Phase::Running {
                next_probe,
                reset_at,
                ..
            } => {
                if reset_at.is_some_and(|r| now >= r) {
                    *reset_at = None;
                    self.backoff.reset();
                    tracing::debug!("gateway healthy long enough; backoff reset");
                }
                if now >= *next_probe && !self.probe_inflight {
                    *next_probe = now + self.cfg.health_interval;
                    let timeout = self
                        .cfg
                        .health_interval
                        .clamp(Duration::from_millis(200), Duration::from_secs(5));
                    self.launch_health(timeout);
                }
            }
            Phase::Stopping {
                kill_at, killed, ..
            } => {
                if now >= *kill_at {
                    if let Some(child) = &self.child {
                        if *killed {
                            tracing::error!(
                                pid = child.pid,
                                "the gateway survives SIGKILL (uninterruptible?); still waiting"
                            );
                        } else {
                            tracing::warn!(
                                pid = child.pid,
                                grace = ?self.cfg.stop_grace,
                                "the gateway did not stop within its grace period; SIGKILL"
                            );
                            process::signal_group(child.pid, libc::SIGKILL);
                        }
                    }
                    *killed = true;
                    kill_cgroup_detached(self.containment.clone());
                    *kill_at = now + KILL_WAIT;
                }
            }
            Phase::Waiting { until } => {
                if now >= *until {
                    self.spawn_now("retry").await;
                }
            }
            Phase::ConfigFailed {
                fingerprint,
                next_check,
            } => {
                if now >= *next_check {
                    *next_check = now + self.cfg.health_interval;
                    let before = fingerprint.clone();
                    if config_fingerprint(&self.cfg).await != before {
                        tracing::info!("gateway configuration changed; starting it again");
                        self.backoff.reset();
                        self.crashes.clear();
                        self.spawn_now("config_changed").await;
                    }
                }
            }
        }
    }

    pub(super) fn launch_health(&mut self, timeout: Duration) {
        self.probe_inflight = true;
        let prober = self.prober.clone();
        let tx = self.probe_tx.clone();
        let generation = self.generation;
        tokio::spawn(async move {
            let kind = ProbeKind::Health(prober.health(timeout).await);
            let _ = tx.send(ProbeMsg { generation, kind }).await;
        });
    }

    pub(super) fn launch_capabilities(&self) {
        let prober = self.prober.clone();
        let tx = self.probe_tx.clone();
        let generation = self.generation;
        tokio::spawn(async move {
            let mut result = Err(String::new());
            // The API may come up a moment after /health: a few tries.
            for attempt in 0..3u32 {
                result = prober.capabilities(Duration::from_secs(5)).await;
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500 * (attempt as u64 + 1))).await;
            }
            let kind = ProbeKind::Capabilities(result);
            let _ = tx.send(ProbeMsg { generation, kind }).await;
        });
    }

    pub(super) async fn on_probe(&mut self, msg: ProbeMsg) {
        if msg.generation != self.generation {
            return;
        }
        match msg.kind {
            ProbeKind::Capabilities(Ok(caps)) => {
                self.status.capabilities = Some(caps);
                self.publish();
            }
            ProbeKind::Capabilities(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the gateway's capabilities");
            }
            ProbeKind::Health(result) => {
                self.probe_inflight = false;
                let pid = self.child.as_ref().map(|c| c.pid);
                let threshold = self.cfg.unhealthy_threshold;
                match (&mut self.phase, result) {
                    (Phase::Starting { .. }, Ok(version)) => {
                        let now = Instant::now();
                        self.status.release = version;
                        self.status.running_since_ms = Some(store::now_ms());
                        self.status.last_error = None;
                        self.phase = Phase::Running {
                            failures: 0,
                            next_probe: now + self.cfg.health_interval,
                            reset_at: Some(now + self.cfg.backoff_reset),
                        };
                        self.transition(
                            AgentState::Running,
                            "healthy",
                            TransitionExtra {
                                pid,
                                ..Default::default()
                            },
                        );
                        self.launch_capabilities();
                    }
                    // Someone else holds the port (the gateway could not
                    // bind it): say so while the start times out.
                    (Phase::Starting { .. }, Err(HealthError::NotOurs(why)))
                        if self.status.last_error.as_ref() != Some(&why) =>
                    {
                        self.status.last_error = Some(why);
                        self.publish();
                    }
                    (Phase::Starting { .. }, Err(_)) => {}
                    (Phase::Running { failures, .. }, Ok(version)) => {
                        *failures = 0;
                        if version.is_some() && version != self.status.release {
                            self.status.release = version;
                            self.publish();
                        }
                        if self.status.state == AgentState::Unhealthy {
                            self.transition(
                                AgentState::Running,
                                "healthy",
                                TransitionExtra {
                                    pid,
                                    ..Default::default()
                                },
                            );
                        }
                    }
                    (Phase::Running { failures, .. }, Err(why)) => {
                        let why = why.to_string();
                        *failures += 1;
                        tracing::warn!(failures = *failures, threshold, error = %why, "gateway health probe failed");
                        if *failures >= threshold {
                            self.status.last_error =
                                Some(format!("{threshold} health probes failed; last: {why}"));
                            self.transition(
                                AgentState::Unhealthy,
                                "unhealthy",
                                TransitionExtra {
                                    pid,
                                    detail: Some(why),
                                    ..Default::default()
                                },
                            );
                            self.begin_stop(After::Retry("unhealthy"), "unhealthy")
                                .await;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
