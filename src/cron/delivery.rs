//! Deliveries of cron outputs to the hub: `POST {hub}/v1/tenant-runtime/
//! {tenant}/deliveries` with `{job_id, run_id, deliver, output}`, kept in
//! SQLite until the hub answers 2xx, retried with capped exponential
//! backoff and jitter. The queue is bounded by `cron.deliveries_max`.

use std::sync::Arc;
use std::time::Duration;

use super::CronService;
use crate::hub::client::HubClient;
use crate::hub::schedule::backoff;
use crate::metrics::OutcomeLabels;
use crate::store::cron as db;

/// Deliveries attempted per pass.
const BATCH: u32 = 16;
const IDLE: Duration = Duration::from_secs(60);

/// The delivery loop; runs until shutdown.
pub(super) async fn run(cron: Arc<CronService>, hub: HubClient) {
    let (base, cap) = (
        cron.config.delivery_backoff_base,
        cron.config.delivery_backoff_cap,
    );
    loop {
        let now = cron.clock.now_ms();
        let due = cron
            .store
            .read(move |c| db::due_deliveries(c, now, BATCH))
            .await
            .unwrap_or_default();
        for d in due {
            if cron.shutdown.is_cancelled() {
                return;
            }
            let result = attempt(&hub, &d).await;
            let id = d.id;
            let write = match result {
                Ok(()) => {
                    cron.metrics
                        .cron_deliveries
                        .get_or_create(&OutcomeLabels { outcome: "acked" })
                        .inc();
                    tracing::info!(job_id = %d.job_id, run_id = %d.run_id, attempts = d.attempts + 1, "cron output delivered to the hub");
                    cron.store.write(move |c| db::ack_delivery(c, id)).await
                }
                Err(e) => {
                    cron.metrics
                        .cron_deliveries
                        .get_or_create(&OutcomeLabels { outcome: "failed" })
                        .inc();
                    // `attempts` failed before this one: this is failure attempts + 1.
                    let failures = u32::try_from(d.attempts.saturating_add(1)).unwrap_or(u32::MAX);
                    let wait = backoff(base, cap, failures, &mut rand::rng());
                    tracing::warn!(job_id = %d.job_id, run_id = %d.run_id, attempts = d.attempts + 1, retry_in = ?wait, error = %e, "cron delivery failed; will retry");
                    let next = cron.clock.now_ms() + wait.as_millis() as i64;
                    cron.store
                        .write(move |c| db::retry_delivery(c, id, next, &e))
                        .await
                }
            };
            if let Err(e) = write {
                tracing::warn!(error = %e, "cannot update a cron delivery");
            }
        }
        let next = cron.store.read(db::next_delivery_at).await.ok().flatten();
        let wait = match next {
            Some(t) => Duration::from_millis((t - cron.clock.now_ms()).max(0) as u64).min(IDLE),
            None => IDLE,
        };
        tokio::select! {
            _ = cron.shutdown.cancelled() => return,
            _ = cron.delivery_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn attempt(hub: &HubClient, d: &db::DeliveryRow) -> Result<(), String> {
    let resp = hub
        .post("deliveries")
        .map_err(|e| e.to_string())?
        .json(&serde_json::json!({
            "job_id": d.job_id,
            "run_id": d.run_id,
            "deliver": d.deliver,
            "output": d.output,
        }))
        .send()
        .await
        .map_err(|e| format!("hub unreachable: {}", e.without_url()))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("hub answered {}", status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_backoff_grows_and_caps() {
        let mut rng = rand::rng();
        let base = Duration::from_secs(2);
        let cap = Duration::from_secs(60);
        let first = backoff(base, cap, 1, &mut rng);
        assert!(first >= base / 2 && first <= base, "{first:?}");
        let fourth = backoff(base, cap, 4, &mut rng);
        assert!(fourth >= Duration::from_secs(8), "{fourth:?}");
        assert!(backoff(base, cap, 40, &mut rng) <= cap);
    }
}
