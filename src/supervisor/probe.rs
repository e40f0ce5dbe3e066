//! HTTP probes of the gateway: `/health` (readiness and liveness, with the
//! version) and `/v1/capabilities` (which API runs should use).

use std::time::Duration;

use crate::agent::GatewayEndpoint;

/// Calls the gateway's own API on loopback.
#[derive(Clone)]
pub struct Prober {
    client: reqwest::Client,
    endpoint: GatewayEndpoint,
}

impl Prober {
    pub fn new(endpoint: GatewayEndpoint) -> Prober {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(1)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Prober { client, endpoint }
    }

    /// `Ok(version)` when `/health` answers 2xx with `status: ok` (or no
    /// status field); `Err(why)` otherwise.
    pub async fn health(&self, timeout: Duration) -> Result<Option<String>, String> {
        let url = format!("{}/health", self.endpoint.base_url);
        let resp = self
            .client
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(describe)?;
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
        let url = format!("{}/v1/capabilities", self.endpoint.base_url);
        let resp = self
            .client
            .get(&url)
            .bearer_auth(&self.endpoint.api_key)
            .timeout(timeout)
            .send()
            .await
            .map_err(describe)?;
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
