//! rustls (ring provider only; no OpenSSL anywhere in the tree).

use std::path::Path;

use crate::daemon::StartError;

/// Install ring as the process-wide rustls provider. Idempotent.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Server configuration from PEM certificate chain and key files.
pub async fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<axum_server::tls_rustls::RustlsConfig, StartError> {
    install_provider();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| {
            StartError::Tls(format!(
                "cannot load {} / {}: {e}",
                cert.display(),
                key.display()
            ))
        })
}
