//! The one HTTP client that talks to the hub. Heartbeats and cron
//! deliveries both go through [`HubClient`], so the hub's trust policy is
//! written once:
//!
//! - rustls with ring; the system's roots plus `hub.ca_file` (the bundled
//!   webpki roots are off: trust is what the operator's image says);
//! - `https_only` when `hub.url` is https (the test fakes are plain http
//!   on loopback);
//! - no redirects (a 3xx is an answer, never a second destination for the
//!   credential);
//! - connect and whole-request timeouts, one idle connection;
//! - the credential taken from [`Credentials`] at each request (so a
//!   rotation applies at once) and marked sensitive;
//! - proxies: an https hub honours the daemon's `HTTPS_PROXY`/`ALL_PROXY`
//!   (and `NO_PROXY`), which only the operator sets (unit drop-in): a proxy
//!   sees the hub's name in `CONNECT`, never the credential, because TLS
//!   runs end to end and the hub's certificate is still checked. A plain
//!   http hub (dev, tests) never goes through a proxy, which would read the
//!   credential.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};

use crate::auth::Credentials;
use crate::config::HubConfig;

/// The hub client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("hub.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("cannot build the hub client: {0}")]
    Build(#[source] reqwest::Error),
}

/// The current credential cannot be put in a header (never expected: the
/// file checks refuse such a credential).
#[derive(Debug, thiserror::Error)]
#[error("the tenant-runtime credential is not usable")]
pub struct NoCredential;

/// Requests to `{hub.url}/v1/tenant-runtime/{tenant}/...` with the
/// credential. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
    base: String,
    credentials: Arc<Credentials>,
}

impl HubClient {
    /// `None` when no hub is configured.
    pub async fn new(
        cfg: &HubConfig,
        tenant_id: &str,
        credentials: Arc<Credentials>,
    ) -> Result<Option<HubClient>, ClientError> {
        let Some(url) = cfg.url.as_deref() else {
            return Ok(None);
        };
        let http = build(cfg, url).await?;
        Ok(Some(HubClient {
            http,
            base: format!(
                "{}/v1/tenant-runtime/{tenant_id}",
                url.trim_end_matches('/')
            ),
            credentials,
        }))
    }

    /// The full URL of a tenant-runtime route (`heartbeat`, `deliveries`).
    pub fn url(&self, route: &str) -> String {
        format!("{}/{route}", self.base)
    }

    /// A `POST` to `route` carrying the current credential.
    pub fn post(&self, route: &str) -> Result<reqwest::RequestBuilder, NoCredential> {
        let bearer: HeaderValue = self.credentials.bearer_header().ok_or(NoCredential)?;
        Ok(self
            .http
            .post(self.url(route))
            .header(AUTHORIZATION, bearer))
    }
}

async fn build(cfg: &HubConfig, url: &str) -> Result<reqwest::Client, ClientError> {
    crate::tls::install_provider();
    let https = url.starts_with("https://");
    let connect = cfg.request_timeout.min(Duration::from_secs(5));
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_webpki_certs(false)
        .tls_built_in_native_certs(true)
        .https_only(https)
        .timeout(cfg.request_timeout)
        .connect_timeout(connect)
        .pool_max_idle_per_host(1)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("hermes-tenantd/", env!("CARGO_PKG_VERSION")));
    if !https {
        builder = builder.no_proxy();
    }
    if let Some(path) = &cfg.ca_file {
        let shown = path.display().to_string();
        let ca_error = |reason: String| ClientError::CaFile {
            path: shown.clone(),
            reason,
        };
        let pem = tokio::fs::read(path)
            .await
            .map_err(|e| ca_error(e.to_string()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in the file".into()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(ClientError::Build)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn config(url: String, ca_file: Option<std::path::PathBuf>) -> HubConfig {
        HubConfig {
            url: Some(url),
            ca_file,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_jitter: 0.1,
            backoff_max: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            clock_skew_threshold: Duration::from_secs(60),
            usage_batch: 100,
            stop_wait_for_runs: Duration::from_secs(600),
        }
    }

    fn credentials(dir: &std::path::Path) -> Arc<Credentials> {
        let p = dir.join("credential");
        std::fs::write(&p, "hub-client-test-credential-0123456789").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Arc::new(Credentials::load(&p, Duration::from_secs(1)).expect("load"))
    }

    /// A one-shot server that answers every request with a redirect to
    /// itself and counts the requests it saw.
    fn redirecting_server() -> (String, std::sync::mpsc::Receiver<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = s.write_all(
                    format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{addr}/elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
                );
            }
        });
        (format!("http://{addr}"), rx)
    }

    #[tokio::test]
    async fn a_redirect_is_an_answer_not_a_second_destination() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (url, seen) = redirecting_server();
        let client = HubClient::new(&config(url, None), "t1", credentials(dir.path()))
            .await
            .expect("build")
            .expect("configured");
        let resp = client
            .post("deliveries")
            .expect("credential")
            .body("{}")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 307);
        let first = seen.recv().expect("one request");
        assert!(first.starts_with("POST /v1/tenant-runtime/t1/deliveries "));
        assert!(first.contains("hub-client-test-credential-0123456789"));
        assert!(
            seen.recv_timeout(Duration::from_millis(300)).is_err(),
            "the redirect was followed"
        );
    }

    #[tokio::test]
    async fn an_https_hub_refuses_plain_http_and_a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = credentials(dir.path());
        let client = HubClient::new(
            &config("https://hub.invalid".into(), None),
            "t1",
            creds.clone(),
        )
        .await
        .expect("build")
        .expect("configured");
        // https_only: a plain http URL is refused before any connection.
        let err = client
            .http
            .get("http://127.0.0.1:9/")
            .send()
            .await
            .expect_err("refused");
        assert!(
            err.is_builder() || err.to_string().contains("scheme"),
            "{err}"
        );

        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate").expect("write");
        let err = HubClient::new(
            &config("https://hub.invalid".into(), Some(bad)),
            "t1",
            creds,
        )
        .await
        .err()
        .expect("refused");
        assert!(matches!(err, ClientError::CaFile { .. }), "{err}");
    }
}
