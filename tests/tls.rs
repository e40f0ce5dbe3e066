//! The API served over rustls when a certificate is configured; plain HTTP
//! on a non-loopback address is refused.

mod common;
use common::*;

/// A self-signed certificate for `localhost` written under `dir`, and the
/// environment that points the daemon at it.
fn certificate(dir: &std::path::Path) -> (rcgen::Certificate, Vec<(String, String)>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let cert_path = dir.join("tls.crt");
    let key_path = dir.join("tls.key");
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    write_private(&key_path, &key.serialize_pem());
    let env = vec![
        (
            "HERMES_TENANTD_LISTEN__TLS_CERT".into(),
            cert_path.display().to_string(),
        ),
        (
            "HERMES_TENANTD_LISTEN__TLS_KEY".into(),
            key_path.display().to_string(),
        ),
    ];
    (cert, env)
}

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, tls_env) = certificate(dir.path());
    let d = TestDaemon::start_with(Options {
        env: tls_env,
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("ca"))
        .resolve("localhost", d.addr)
        .build()
        .expect("client");
    let url = format!(
        "https://localhost:{}/v1/tenant-runtime/{TENANT}/version",
        d.addr.port()
    );
    let r = client
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status(), 200);
    // Plain HTTP on the TLS port does not get an answer.
    let plain = d.client.get(d.url("/v1/healthz")).send().await;
    assert!(plain.is_err() || !plain.expect("resp").status().is_success());
}

#[test]
fn non_loopback_without_tls_is_refused_at_start() {
    let out = std::process::Command::new(binary())
        .args(["check-config", "--dev"])
        .env("HERMES_TENANTD_LISTEN__ADDR", "0.0.0.0:8643")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen.addr") && err.contains("tls"), "{err}");
}

#[tokio::test]
async fn silent_tls_clients_are_closed_after_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tmp");
    let (cert, tls_env) = certificate(dir.path());
    let d = TestDaemon::start_with(Options {
        config_extra: "[limits]\ntls_handshake_timeout = \"2s\"\n".into(),
        env: tls_env,
        ..Default::default()
    })
    .await;
    // One silent, one that starts a ClientHello record and stops.
    let silent = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    let mut partial = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    // A real client is served meanwhile.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("ca"))
        .resolve("localhost", d.addr)
        .build()
        .expect("client");
    let r = client
        .get(format!("https://localhost:{}/v1/healthz", d.addr.port()))
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status(), 200);
    for mut s in [silent, partial] {
        let mut buf = [0u8; 64];
        // Generous bound for a loaded machine; without the timeout the
        // connection stays open for as long as the client likes.
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "connection not closed: {read:?}"
        );
    }
}
