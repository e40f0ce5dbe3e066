//! HTTP probes of the gateway: `/health` (readiness and liveness, with the
//! version) and `/v1/capabilities` (which API runs should use). Each goes
//! out only when the port is held by the gateway the supervisor started
//! ([`KeyGate`]): an answer from anything else is not readiness.

use std::sync::Arc;
use std::time::Duration;

use crate::agent::{GatewayEndpoint, KeyGate};

/// Calls the gateway's own API on loopback.
#[derive(Clone)]
pub struct Prober {
    client: reqwest::Client,
    endpoint: GatewayEndpoint,
    gate: Arc<KeyGate>,
}

/// A failed `/health` probe.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HealthError {
    /// The port is held by a process the daemon did not start: nothing
    /// was sent.
    #[error("{0}")]
    NotOurs(String),
    #[error("{0}")]
    Failed(String),
}

/// The client for the gateway's loopback API: never through a proxy
/// (a proxy would see the key and the prompts), no redirects, and no
/// root certificates (plain HTTP on loopback; loading the system's CA
/// bundle cost every daemon ~0.3 MiB, BENCHMARKS.md "Idle memory").
pub fn loopback_client(connect_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
}

impl Prober {
    /// No fallback to a default client when this fails: that one would
    /// honour the environment's proxies.
    pub fn new(endpoint: GatewayEndpoint, gate: Arc<KeyGate>) -> Result<Prober, reqwest::Error> {
        let client = loopback_client(Duration::from_secs(2))
            .pool_max_idle_per_host(1)
            .build()?;
        Ok(Prober {
            client,
            endpoint,
            gate,
        })
    }

    /// `Ok(version)` when `/health` answers 2xx with `status: ok` (or no
    /// status field); `Err(why)` otherwise.
    pub async fn health(&self, timeout: Duration) -> Result<Option<String>, HealthError> {
        match self.gate.check().await {
            Ok(()) => {}
            Err(e) if e.is_foreign() => return Err(HealthError::NotOurs(e.to_string())),
            Err(e) => return Err(HealthError::Failed(e.to_string())),
        }
        self.health_unchecked(timeout)
            .await
            .map_err(HealthError::Failed)
    }

    async fn health_unchecked(&self, timeout: Duration) -> Result<Option<String>, String> {
        let url = format!("{}/health", self.endpoint.base_url);
        let resp = self
            .client
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.failed(e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("/health answered {}", status.as_u16()));
        }
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("/health body: {}", describe(e)))?;
        match body.get("status").and_then(|s| s.as_str()) {
            None | Some("ok") => Ok(body
                .get("version")
                .and_then(|v| v.as_str())
                .map(str::to_owned)),
            Some(other) => Err(format!("/health status is {other:?}")),
        }
    }

    /// The `/v1/capabilities` document.
    pub async fn capabilities(&self, timeout: Duration) -> Result<serde_json::Value, String> {
        let bearer = self.gate.bearer().await.map_err(|e| e.to_string())?;
        let url = format!("{}/v1/capabilities", self.endpoint.base_url);
        let resp = self
            .client
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, bearer)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.failed(e))?;
        if !resp.status().is_success() {
            return Err(format!(
                "/v1/capabilities answered {}",
                resp.status().as_u16()
            ));
        }
        resp.json()
            .await
            .map_err(|e| format!("/v1/capabilities body: {}", describe(e)))
    }
}

impl Prober {
    /// Describe a failed request; a failed connection means whoever holds
    /// the port is checked again before the next one.
    fn failed(&self, e: reqwest::Error) -> String {
        if e.is_connect() {
            self.gate.invalidate();
        }
        describe(e)
    }
}

/// A short reason without the URL's query or any header.
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused or failed".into()
    } else if e.is_decode() {
        "not valid JSON".into()
    } else {
        e.without_url().to_string()
    }
}
