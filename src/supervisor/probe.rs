//! HTTP probes of the gateway: `/health` (readiness and liveness, with the
//! version) and `/v1/capabilities` (which API runs should use). Each goes
//! out only when the port is held by the gateway the supervisor started
//! ([`KeyGate`], and on a new connection [`gateway_connect`]): an answer
//! from anything else is not readiness.

use std::sync::Arc;
use std::time::Duration;

use crate::agent::{GatewayEndpoint, KeyGate};
use crate::supervisor::gateway_connect;
use crate::supervisor::gateway_socket::Refusal;

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

impl From<Refusal> for HealthError {
    fn from(r: Refusal) -> Self {
        if r.is_foreign() {
            HealthError::NotOurs(r.to_string())
        } else {
            HealthError::Failed(r.to_string())
        }
    }
}

impl Prober {
    /// No fallback to a default client when this fails: that one would
    /// honour the environment's proxies.
    pub fn new(endpoint: GatewayEndpoint, gate: Arc<KeyGate>) -> Result<Prober, reqwest::Error> {
        let client = gateway_connect::client(&gate, Duration::from_secs(2))
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
        self.gate.check().await?;
        self.health_unchecked(timeout).await
    }

    async fn health_unchecked(&self, timeout: Duration) -> Result<Option<String>, HealthError> {
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
            return Err(HealthError::Failed(format!(
                "/health answered {}",
                status.as_u16()
            )));
        }
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| HealthError::Failed(format!("/health body: {}", describe(e))))?;
        match body.get("status").and_then(|s| s.as_str()) {
            None | Some("ok") => Ok(body
                .get("version")
                .and_then(|v| v.as_str())
                .map(str::to_owned)),
            Some(other) => Err(HealthError::Failed(format!("/health status is {other:?}"))),
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
            .map_err(|e| self.failed(e).to_string())?;
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
    /// Describe a failed request: the gate's refusal when it dropped the
    /// connection; any other failed connection means whoever holds the
    /// port is checked again before the next one.
    fn failed(&self, e: reqwest::Error) -> HealthError {
        if let Some(r) = gateway_connect::refusal_of(&e) {
            return r.into();
        }
        if e.is_connect() {
            self.gate.invalidate();
        }
        HealthError::Failed(describe(e))
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
