//! Deliveries of cron outputs to the hub: `POST {hub}/v1/tenant-runtime/
//! {tenant}/deliveries` with `{job_id, run_id, deliver, output}`, kept in
//! SQLite until the hub answers 2xx, retried with capped exponential
//! backoff and jitter. The queue is bounded by `cron.deliveries_max`.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::{CronService, HubTarget};
use crate::metrics::OutcomeLabels;
use crate::store::cron as db;

/// Deliveries attempted per pass.
const BATCH: u32 = 16;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const IDLE: Duration = Duration::from_secs(60);

/// The wait before attempt `attempts + 1`: base * 2^attempts, capped, with
/// up to 20 % jitter.
pub fn backoff(base: Duration, cap: Duration, attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
    let raw = base.saturating_mul(2u32.saturating_pow(exp)).min(cap);
    let jitter = rand::rng().random_range(0.0..0.2);
    raw.mul_f64(1.0 + jitter).min(cap)
}

fn client(hub: &HubTarget) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = &hub.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("hub.ca_file: {e}"))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("hub.ca_file: {e}"))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| e.to_string())
}

/// The delivery loop; runs until shutdown.
pub(super) async fn run(cron: Arc<CronService>, hub: HubTarget) {
    let h = hub.clone();
    let http = match tokio::task::spawn_blocking(move || client(&h)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cron deliveries disabled: cannot build the hub client");
            return;
        }
        Err(_) => return,
    };
    let url = format!("{}/v1/tenant-runtime/{}/deliveries", hub.url, hub.tenant_id);
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
            let result = attempt(&http, &url, &hub, &d).await;
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
                    let wait = backoff(base, cap, d.attempts);
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

async fn attempt(
    http: &reqwest::Client,
    url: &str,
    hub: &HubTarget,
    d: &db::DeliveryRow,
) -> Result<(), String> {
    let path = hub.credential_file.clone();
    let token = tokio::task::spawn_blocking(move || crate::auth::read_credential_file(&path))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("credential: {e}"))?;
    let resp = http
        .post(url)
        .bearer_auth(token)
        .json(&serde_json::json!({
            "job_id": d.job_id,
            "run_id": d.run_id,
            "deliver": d.deliver,
            "output": d.output,
        }))
        .send()
        .await
        .map_err(|e| format!("hub unreachable: {e}"))?;
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
    fn backoff_grows_and_caps() {
        let base = Duration::from_secs(2);
        let cap = Duration::from_secs(60);
        let b0 = backoff(base, cap, 0);
        assert!(b0 >= base && b0 <= base.mul_f64(1.2), "{b0:?}");
        let b3 = backoff(base, cap, 3);
        assert!(b3 >= Duration::from_secs(16), "{b3:?}");
        assert!(backoff(base, cap, 40) <= cap);
        assert_eq!(backoff(base, cap, 10).max(cap), cap);
    }
}
