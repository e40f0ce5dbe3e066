//! Records the agent's running time into hourly buckets for the usage
//! report, from the agent status the supervisor publishes (no access to
//! the supervisor's internals needed). An open running interval is
//! flushed every `flush` period, so a daemon crash loses at most that
//! much (the report under-counts rather than over-counts). Also keeps the
//! `agent_state` metric current.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentHandle, AgentState, AgentStatus};
use crate::metrics::Metrics;
use crate::store::{Store, hub, now_ms};

/// How often an open running interval is written down.
pub const FLUSH: Duration = Duration::from_secs(60);
/// Buckets older than this are dropped (13 months: a billing year and a month).
pub const RETENTION_MS: i64 = 400 * 24 * 3_600_000;

pub fn spawn(
    agent: &AgentHandle,
    store: Store,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(record(agent.subscribe(), store, metrics, cancel, FLUSH))
}

/// The recorder loop (public for tests with a short `flush`).
pub async fn record(
    mut rx: watch::Receiver<AgentStatus>,
    store: Store,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    flush: Duration,
) {
    let first = rx.borrow_and_update().state;
    metrics.hub.set_agent_state(first);
    let mut since = (first == AgentState::Running).then(now_ms);
    let mut tick = tokio::time::interval(flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut publisher_alive = true;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = rx.changed(), if publisher_alive => {
                if changed.is_err() {
                    publisher_alive = false;
                    continue;
                }
                let state = rx.borrow_and_update().state;
                let now = now_ms();
                match (since, state == AgentState::Running) {
                    (Some(from), false) => {
                        save(&store, from, now).await;
                        since = None;
                    }
                    (None, true) => since = Some(now),
                    _ => {}
                }
                // After the save, so the metric showing a state means its
                // running time is written.
                metrics.hub.set_agent_state(state);
            }
            _ = tick.tick() => {
                if let Some(from) = since {
                    let now = now_ms();
                    save(&store, from, now).await;
                    since = Some(now);
                }
                let cutoff = now_ms() - RETENTION_MS;
                if let Err(e) = store.write(move |c| hub::prune_agent_uptime(c, cutoff)).await {
                    tracing::warn!(error = %e, "cannot prune agent uptime buckets");
                }
            }
        }
    }
    if let Some(from) = since {
        save(&store, from, now_ms()).await;
    }
}

async fn save(store: &Store, from: i64, to: i64) {
    if let Err(e) = store
        .write(move |c| hub::add_agent_running(c, from, to))
        .await
    {
        tracing::warn!(error = %e, "cannot record agent running time");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Desired, channel};

    #[tokio::test]
    async fn running_time_is_recorded_and_flushed() {
        let dir = tempfile::tempdir().expect("tmp");
        let store =
            Store::open_blocking(&dir.path().join("db"), &Default::default()).expect("open store");
        let endpoint = crate::agent::GatewayEndpoint {
            base_url: "http://127.0.0.1:9".into(),
            api_key: "unused-in-this-test-0123456789".into(),
        };
        let (handle, ch) = channel(AgentStatus::initial(Desired::Running), endpoint);
        let metrics = Arc::new(Metrics::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(record(
            handle.subscribe(),
            store.clone(),
            metrics.clone(),
            cancel.clone(),
            Duration::from_millis(50),
        ));
        let set = |state| {
            ch.status.send_modify(|s| s.state = state);
        };
        let total = |store: Store| async move {
            store
                .read(|c| hub::usage_summary(c, 0, i64::MAX))
                .await
                .expect("sum")
                .agent_uptime_ms
        };
        set(AgentState::Starting);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(total(store.clone()).await, 0, "not running yet");
        set(AgentState::Running);
        // Flushed while still running.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while total(store.clone()).await < 100 {
            assert!(
                std::time::Instant::now() < deadline,
                "no flush while running"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        set(AgentState::Stopped);
        let stopped = "hermes_tenantd_agent_state{state=\"stopped\"} 1";
        while !metrics.render(0).contains(stopped) {
            assert!(std::time::Instant::now() < deadline, "stop not observed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after_stop = total(store.clone()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            total(store.clone()).await,
            after_stop,
            "stopped time is not counted"
        );
        assert!(
            metrics
                .render(0)
                .contains("hermes_tenantd_agent_state{state=\"stopped\"} 1")
        );
        cancel.cancel();
        task.await.expect("join");
    }
}
