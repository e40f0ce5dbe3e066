//! tracing set-up: text or JSON lines on stderr, filter from the config
//! (`RUST_LOG` wins when set).

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Targets that are chatty at INFO and say nothing an operator needs.
const QUIET: &str = ",tokio_cron_scheduler=warn,hyper=warn,rustls=warn";

pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            EnvFilter::try_new(format!("{}{QUIET}", cfg.level))
                .unwrap_or_else(|_| EnvFilter::new("info"))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    let _ = result;
}
