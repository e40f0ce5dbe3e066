//! The heartbeat task: the first beat at once, then every interval (±
//! jitter), backing off exponentially while the hub fails. Each beat is
//! built fresh (agent status, host resources, counters, the oldest
//! unacknowledged usage entries), POSTed with the tenant-runtime
//! credential, and the reply applied: acknowledge usage, desired agent
//! state and access, interval override, clock skew. A failed beat changes
//! nothing but the schedule: an unreachable hub never touches the agent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use super::client::ClientError;
use super::client::HubClient;
use super::decision::{Decisions, HubDecision};
use super::payload::{AgentReport, BODY_VERSION, Beat, ClockReport, LinkReport, UsageReport};
use super::reply::{self, Reply, ReplyError};
use super::resources::Sampler;
use super::schedule::Schedule;
use super::{Access, HubLink};
use crate::agent::{AgentHandle, Desired};
use crate::auth::Credentials;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, ms_to_rfc3339, now_ms, usage};

/// What the heartbeat needs from the rest of the daemon.
#[derive(Clone)]
pub struct Deps {
    pub config: Arc<Config>,
    pub store: Store,
    pub agent: AgentHandle,
    pub link: HubLink,
    pub metrics: Arc<Metrics>,
    pub credentials: Arc<Credentials>,
    /// Agent releases: reported in each beat, `desired.agent_release`
    /// applied (`None`: an empty report, the desire ignored; benches).
    pub releases: Option<crate::releases::Releases>,
}

/// One beat that did not get a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    #[error("cannot build the heartbeat: {0}")]
    Build(String),
    #[error("cannot reach the hub: {0}")]
    Connect(String),
    #[error("the hub did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the hub answered HTTP {0}")]
    Status(u16),
    #[error("malformed reply: {0}")]
    Malformed(#[from] ReplyError),
}

impl BeatError {
    pub fn reason(&self) -> &'static str {
        match self {
            BeatError::Build(_) => "build",
            BeatError::Connect(_) => "connect",
            BeatError::Timeout(_) => "timeout",
            BeatError::Status(_) => "status",
            BeatError::Malformed(_) => "malformed",
        }
    }
}

impl From<StoreError> for BeatError {
    fn from(e: StoreError) -> Self {
        BeatError::Build(e.to_string())
    }
}

/// The heartbeat loop's state. Nothing here grows with time.
pub struct Heartbeat {
    deps: Deps,
    client: HubClient,
    sampler: Option<Sampler>,
    boot_id: String,
    seq: u64,
    started: Instant,
    failures: u32,
    schedule: Schedule,
    last_success_at: Option<String>,
    decisions: Decisions,
}

/// What a successful beat did, for the loop and the tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub acknowledged: usize,
    pub command: Option<Desired>,
}

impl Heartbeat {
    /// `None` when no hub is configured.
    pub async fn new(deps: Deps) -> Result<Option<Heartbeat>, ClientError> {
        let client = HubClient::new(
            &deps.config.hub,
            &deps.config.tenant_id,
            deps.credentials.clone(),
        )
        .await?;
        Ok(client.map(|c| Heartbeat::with_client(deps, c)))
    }

    /// A heartbeat sending through `client` (the daemon's one hub client).
    pub fn with_client(deps: Deps, client: HubClient) -> Heartbeat {
        let hub = &deps.config.hub;
        let schedule = Schedule {
            interval: hub.heartbeat_interval,
            jitter: hub.heartbeat_jitter,
            backoff_max: hub.backoff_max,
        };
        Heartbeat {
            client,
            sampler: None,
            boot_id: crate::auth::random_token(16),
            seq: 0,
            started: Instant::now(),
            failures: 0,
            schedule,
            last_success_at: None,
            decisions: Decisions::new(
                deps.agent.clone(),
                deps.link.clone(),
                deps.store.clone(),
                hub.stop_wait_for_runs,
            ),
            deps,
        }
    }

    pub fn spawn(self, cancel: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(cancel))
    }

    /// Beat until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        tracing::info!(
            interval_ms = self.schedule.interval.as_millis() as u64,
            boot_id = %self.boot_id,
            "heartbeat started"
        );
        self.deps
            .metrics
            .hub
            .access_suspended
            .set(i64::from(self.deps.link.access() == Access::Suspended));
        // A suspension persisted by an earlier run still holds.
        if self.deps.link.access() == Access::Suspended {
            self.decisions.suspend();
        }
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.beat() => r,
            };
            let delay = match result {
                Ok(_) => self.schedule.next_delay(0, &mut rand::rng()),
                Err(_) => self.schedule.next_delay(self.failures, &mut rand::rng()),
            };
            tracing::debug!(delay_ms = delay.as_millis() as u64, "next heartbeat");
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!("heartbeat stopped");
    }

    /// One beat: build, send, apply. Updates the failure count and metrics.
    pub async fn beat(&mut self) -> Result<Applied, BeatError> {
        let result = self.try_beat().await;
        let m = &self.deps.metrics.hub;
        match result {
            Ok(applied) => {
                if self.failures > 0 {
                    tracing::info!(
                        after_failures = self.failures,
                        "the hub answers heartbeats again"
                    );
                }
                self.failures = 0;
                let now = now_ms();
                self.last_success_at = Some(ms_to_rfc3339(now));
                m.heartbeat_last_success.set(now as f64 / 1000.0);
                m.heartbeat_consecutive_failures.set(0);
                Ok(applied)
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                m.failed(e.reason());
                m.heartbeat_consecutive_failures
                    .set(i64::from(self.failures));
                tracing::warn!(
                    error = %e,
                    reason = e.reason(),
                    consecutive_failures = self.failures,
                    seq = self.seq,
                    "heartbeat failed"
                );
                Err(e)
            }
        }
    }

    async fn try_beat(&mut self) -> Result<Applied, BeatError> {
        self.seq += 1;
        let (body, max_seq) = self.build().await?;
        let m = &self.deps.metrics.hub;
        m.heartbeat_payload_bytes.set(body.len() as i64);
        let request = self
            .client
            .post("heartbeat")
            .map_err(|e| BeatError::Build(e.to_string()))?;
        m.heartbeats_sent.inc();
        let sent_ms = now_ms();
        let sent = Instant::now();
        let timeout = self.deps.config.hub.request_timeout;
        let classify = |e: reqwest::Error| {
            let e = e.without_url();
            if e.is_timeout() {
                BeatError::Timeout(timeout)
            } else {
                BeatError::Connect(error_chain(&e))
            }
        };
        let mut resp = request
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .send()
            .await
            .map_err(classify)?;
        if !resp.status().is_success() {
            return Err(BeatError::Status(resp.status().as_u16()));
        }
        let mut text = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if text.len() + chunk.len() > reply::MAX_REPLY_BYTES {
                return Err(ReplyError::TooLarge.into());
            }
            text.extend_from_slice(&chunk);
        }
        let rtt = sent.elapsed();
        let reply = reply::parse(&text)?;
        Ok(self.apply(reply, max_seq, sent_ms, rtt).await)
    }

    /// The body of the next beat and the highest usage `seq` it carries.
    pub async fn build(&mut self) -> Result<(Vec<u8>, Option<i64>), BeatError> {
        let batch = self.deps.config.hub.usage_batch;
        let rows = self
            .deps
            .store
            .read(move |c| usage::unreported(c, batch + 1))
            .await?;
        let sampler = self.sampler.take();
        let data_dir = self.deps.config.data_dir.clone();
        let (sampler, host) = tokio::task::spawn_blocking(move || {
            let mut s = sampler.unwrap_or_else(|| Sampler::new(&data_dir));
            let host = s.sample();
            (s, host)
        })
        .await
        .map_err(|e| BeatError::Build(format!("resource sample: {e}")))?;
        self.sampler = Some(sampler);

        let status = self.deps.agent.status();
        let releases = self
            .deps
            .releases
            .as_ref()
            .map(|r| r.report())
            .unwrap_or_default();
        let link = &self.deps.link;
        let (drain, activity) = match link.ops() {
            Some(ops) => (Some(ops.drain.view()), Some(ops.activity().await?)),
            None => (None, None),
        };
        let usage = UsageReport::new(&rows, batch as usize);
        let max_seq = usage.max_seq();
        let beat = Beat {
            version: BODY_VERSION,
            tenant_id: &self.deps.config.tenant_id,
            boot_id: &self.boot_id,
            seq: self.seq,
            sent_at: ms_to_rfc3339(now_ms()),
            daemon_version: crate::VERSION,
            agent_release: status.release.as_deref(),
            agent: AgentReport::from_status(&status),
            access: link.access(),
            daemon_uptime_s: self.started.elapsed().as_secs(),
            host: &host,
            open_runs: link.open_runs(),
            cron_jobs_due: link.cron_jobs_due(),
            clock: ClockReport::new(
                link.clock(),
                self.deps.config.hub.clock_skew_threshold.as_secs_f64(),
            ),
            link: LinkReport {
                consecutive_failures: self.failures,
                last_success_at: self.last_success_at.as_deref(),
                interval_s: self.schedule.interval.as_secs_f64(),
            },
            usage,
            releases: &releases,
            drain,
            activity,
            agent_config: link.agent_config(),
        };
        let body = serde_json::to_vec(&beat).map_err(|e| BeatError::Build(e.to_string()))?;
        Ok((body, max_seq))
    }

    /// Apply a well-formed reply.
    async fn apply(
        &mut self,
        reply: Reply,
        max_seq: Option<i64>,
        sent_ms: i64,
        rtt: Duration,
    ) -> Applied {
        let mut applied = Applied::default();
        let store = &self.deps.store;
        let m = &self.deps.metrics.hub;

        // Acknowledge only what this beat carried: an ack beyond it would
        // mark entries the hub never saw.
        if let (Some(ack), Some(max)) = (reply.ack_seq, max_seq) {
            if ack > max {
                tracing::warn!(
                    ack_seq = ack,
                    max_sent = max,
                    "the hub acknowledged usage beyond what this beat carried; clamped"
                );
            }
            let upto = ack.min(max);
            match store.write(move |c| usage::acknowledge(c, upto)).await {
                Ok(n) => {
                    m.usage_acknowledged.inc_by(n as u64);
                    applied.acknowledged = n;
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "cannot mark usage as reported; it will be sent again"
                ),
            }
        }

        let desired = reply.desired.unwrap_or_default();
        let mut resumed = false;
        if let Some(access) = desired.access {
            match self.deps.link.set_access(store, access).await {
                Ok(true) => {
                    tracing::warn!(
                        access = access.as_str(),
                        "the hub changed this tenant's access"
                    );
                    m.access_suspended
                        .set(i64::from(access == Access::Suspended));
                    resumed = access == Access::Active;
                }
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "cannot persist the access the hub set"),
            }
        }
        // Who decides is `hub::decision`'s rule: an edge, not a level.
        let decision = desired.agent.map(|agent| HubDecision {
            agent,
            version: desired.version,
        });
        applied.command = self.decisions.apply(resumed, decision).await;
        // Installed and activated by the releases worker (same gate and
        // rollback as the API); never waited for here.
        if let (Some(release), Some(releases)) = (&desired.agent_release, &self.deps.releases) {
            releases.desired(release, desired.agent_release_sha256.as_deref());
        }

        if let Some(asked) = reply.heartbeat_interval_s {
            match Schedule::bounded_override(self.deps.config.hub.heartbeat_interval, asked) {
                Some(i) if i != self.schedule.interval => {
                    tracing::info!(
                        interval_ms = i.as_millis() as u64,
                        asked_s = asked,
                        "the hub changed the heartbeat interval"
                    );
                    self.schedule.interval = i;
                }
                Some(_) => {}
                None => tracing::warn!(
                    asked_s = asked,
                    "ignored a meaningless interval from the hub"
                ),
            }
        }

        if let Some(now) = reply.now {
            self.observe_clock(now.timestamp_millis(), sent_ms, rtt);
        }
        applied
    }

    /// Compare the hub's clock with ours at the middle of the exchange.
    fn observe_clock(&mut self, hub_ms: i64, sent_ms: i64, rtt: Duration) {
        let ours = sent_ms + (rtt.as_millis() / 2) as i64;
        let skew_ms = hub_ms - ours;
        let threshold = self.deps.config.hub.clock_skew_threshold.as_millis() as i64;
        let warning = skew_ms.abs() > threshold;
        let before = self.deps.link.clock();
        let m = &self.deps.metrics.hub;
        m.clock_skew_seconds.set(skew_ms as f64 / 1000.0);
        m.clock_skew_warning.set(i64::from(warning));
        if warning && !before.warning {
            tracing::warn!(
                skew_s = skew_ms as f64 / 1000.0,
                threshold_s = threshold as f64 / 1000.0,
                "clock skew with the hub beyond the threshold: credentials and cron depend on the clock; check NTP"
            );
        } else if !warning && before.warning {
            tracing::info!(
                skew_s = skew_ms as f64 / 1000.0,
                "clock skew with the hub back within the threshold"
            );
        }
        self.deps.link.set_clock(skew_ms, warning);
    }
}

/// An error with its sources, for the log (reqwest's top-level message
/// alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
