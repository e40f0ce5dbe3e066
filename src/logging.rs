//! tracing set-up: text or JSON lines on stderr, filter from the config
//! (`RUST_LOG` wins when set); and, for the logs API and diagnostics, the
//! daemon's own events as JSON lines in a size-capped rotating file
//! (`DATA_DIR/logs/daemon.log`), redacted before they are written.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};
use crate::supervisor::logs::RotatingFile;

/// Targets that are chatty at INFO and say nothing an operator needs.
const QUIET: &str = ",tokio_cron_scheduler=warn,hyper=warn,rustls=warn";

/// The daemon's own log file in the logs directory.
pub const DAEMON_LOG: &str = "daemon.log";

/// Where and how big the daemon's log file is.
pub struct FileSettings<'a> {
    pub dir: &'a Path,
    pub max_bytes: u64,
    pub keep: u32,
}

pub fn init(cfg: &LogConfig) {
    init_with_file(cfg, None);
}

pub fn init_with_file(cfg: &LogConfig, file: Option<FileSettings<'_>>) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            EnvFilter::try_new(format!("{}{QUIET}", cfg.level))
                .unwrap_or_else(|_| EnvFilter::new("info"))
        });
    let stderr: Box<dyn Layer<_> + Send + Sync> = match cfg.format {
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr),
        ),
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::stderr),
        ),
    };
    let file_layer = file.and_then(|f| {
        open_sink(&f).map(|sink| {
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(sink)
                // The gateway's output has its own file (`gateway.log`).
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    m.target() != "gateway"
                }))
        })
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file_layer)
        .try_init();
}

fn open_sink(f: &FileSettings<'_>) -> Option<FileSink> {
    use std::os::unix::fs::DirBuilderExt;
    // The data directory is made private at start (`daemon`); this only
    // makes sure the first lines have somewhere to go.
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(f.dir)
    {
        eprintln!("hermes-tenantd: no daemon log file: {e}");
        return None;
    }
    Some(FileSink(Arc::new(Mutex::new(RotatingFile::new(
        f.dir.join(DAEMON_LOG),
        f.max_bytes,
        f.keep,
    )))))
}

/// Hands tracing one buffer per event; the record is redacted and
/// appended whole when the buffer is dropped.
#[derive(Clone)]
struct FileSink(Arc<Mutex<RotatingFile>>);

struct Record {
    sink: FileSink,
    buf: Vec<u8>,
}

impl Write for Record {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        let text = crate::ops::redact::redact(&text);
        if let Ok(mut f) = self.sink.0.lock() {
            // Never log a failure here: it would come back to this file.
            let _ = f.write_record(text.as_bytes());
        }
    }
}

impl<'a> MakeWriter<'a> for FileSink {
    type Writer = Record;

    fn make_writer(&'a self) -> Record {
        Record {
            sink: self.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}
