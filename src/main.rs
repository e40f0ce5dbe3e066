//! The `hermes-tenantd` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use hermes_tenantd::config::{Config, Source};
use hermes_tenantd::daemon::Daemon;
use hermes_tenantd::store::{self, conversations};

#[derive(Parser)]
#[command(
    name = "hermes-tenantd",
    version,
    about = "Per-VM daemon of a hosted Hermes Agent platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// Configuration file (default: /etc/hermes-tenantd/config.toml when it exists).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Development defaults: data in ./.tenantd-dev, loopback, generated credential, no hub.
    #[arg(long)]
    dev: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run(ConfigArgs),
    /// Apply pending database migrations and exit.
    Migrate(ConfigArgs),
    /// Validate the configuration and exit (non-zero with a message naming the bad key).
    CheckConfig(ConfigArgs),
    /// Print the daemon version and the schema version it writes.
    Version,
    /// Full-text search over the local conversation store (read-only).
    Search {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// FTS5 query (words, "phrases", prefix*, OR, NOT).
        query: String,
        /// Quote every word instead of reading FTS5 syntax.
        #[arg(long)]
        plain: bool,
        /// Most results to print.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Drain the running daemon before a restart: new runs get `503
    /// draining` (or are queued), cron firings are held, runs in flight
    /// finish. Talks to the daemon's local control socket (root or the
    /// daemon's user; no credential). Exit: 0 done (drained with --wait),
    /// 3 deadline passed with runs in flight, 4 no daemon running, 1 error.
    Drain {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Return only once no run is in flight (or the deadline passed).
        #[arg(long)]
        wait: bool,
        /// How long to wait for the runs in flight (`30s`, `10m`, at most 24h).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// End the drain instead (queued runs start, cron resumes).
        #[arg(long, conflicts_with_all = ["wait", "status"])]
        cancel: bool,
        /// Only show the drain state.
        #[arg(long)]
        status: bool,
    },
}

fn load(args: &ConfigArgs) -> Result<Config, String> {
    Config::load(&Source {
        file: args.config.clone(),
        dev: args.dev,
    })
    .map_err(|e| format!("configuration error: {e}"))
}

fn main() -> ExitCode {
    // Before any thread or SQLite connection exists (both settings apply
    // only to what comes after them).
    hermes_tenantd::allocator::limit_arenas();
    store::configure_process();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Drain {
            cfg,
            wait,
            deadline,
            cancel,
            status,
        } => return drain(&cfg, wait, deadline, cancel, status),
        Command::Version => {
            let schema = store::migrations::latest();
            println!(
                "hermes-tenantd {} (schema {schema}; runs on a newer database whose compatibility floor is {schema} or lower)",
                hermes_tenantd::VERSION,
            );
            Ok(())
        }
        Command::CheckConfig(args) => load(&args).map(|c| {
            println!(
                "ok: tenant {} listening on {} ({}), data in {}",
                c.tenant_id,
                c.listen.addr,
                if c.listen.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                c.data_dir.display()
            );
        }),
        Command::Migrate(args) => load(&args).and_then(|c| {
            let opts = store::StoreOptions {
                synchronous: c.store.synchronous,
                readers: 1,
            };
            store::Store::open_blocking(&c.data_dir.join("tenantd.db"), &opts)
                .and_then(|s| migrated(&s))
                .map_err(|e| e.to_string())
        }),
        Command::Search {
            cfg,
            query,
            plain,
            limit,
        } => load(&cfg).and_then(|c| search(&c, query, plain, limit)),
        Command::Run(args) => load(&args).and_then(run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hermes-tenantd: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What `migrate` prints: the schema this build writes (what `version` and
/// `GET /version` report) and, on a newer database it may run on, that one.
fn migrated(s: &store::Store) -> Result<(), store::StoreError> {
    let conn = rusqlite::Connection::open_with_flags(
        s.path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let found = store::migrations::on_disk(&conn)?;
    let writes = s.schema_version();
    if found.version > writes {
        println!(
            "schema version {writes}; the database has schema {}, written by a newer hermes-tenantd, and its compatibility floor {} lets this build run on it: no migration applied",
            found.version,
            found.floor.unwrap_or_default()
        );
    } else {
        println!("schema version {writes}");
    }
    Ok(())
}

fn drain(
    cfg: &ConfigArgs,
    wait: bool,
    deadline: std::time::Duration,
    cancel: bool,
    status: bool,
) -> ExitCode {
    use hermes_tenantd::ops::control::{self, Outcome, Request};
    let config = match load(cfg) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("hermes-tenantd: {message}");
            return ExitCode::FAILURE;
        }
    };
    let request = if cancel {
        Request::Cancel
    } else if status {
        Request::Status
    } else {
        Request::Drain {
            deadline_s: deadline.as_secs().max(1),
            wait,
        }
    };
    let print = |r: &control::Reply| {
        if let Some(d) = &r.drain {
            println!(
                "drain: {} ({} run(s) in flight, {} queued){}",
                serde_json::to_value(d.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                d.runs_in_flight,
                d.queued_runs,
                d.deadline_at
                    .as_deref()
                    .map(|t| format!(", deadline {t}"))
                    .unwrap_or_default()
            );
        }
    };
    match control::client(&config.data_dir, &request, print) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::DeadlinePassed) => {
            eprintln!("hermes-tenantd: the deadline passed with runs still in flight");
            ExitCode::from(3)
        }
        Ok(Outcome::NotRunning) => {
            eprintln!("hermes-tenantd: no daemon is running with this data directory");
            ExitCode::from(4)
        }
        Err(message) => {
            eprintln!("hermes-tenantd: {message}");
            ExitCode::FAILURE
        }
    }
}

fn search(c: &Config, query: String, plain: bool, limit: u32) -> Result<(), String> {
    let path = c.data_dir.join("tenantd.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    store::rank::register(&conn).map_err(|e| e.to_string())?;
    let filter = conversations::SearchFilter {
        query,
        plain,
        limit: limit.clamp(1, 10_000),
        ..Default::default()
    };
    let page = conversations::search(&conn, &filter).map_err(|e| e.to_string())?;
    let style = if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        Highlight::Bold
    } else {
        Highlight::Plain
    };
    for hit in &page.items {
        println!(
            "{}  {}  {:<9} {}  {}",
            hit.created_at,
            hit.session_id,
            hit.role,
            hit.platform,
            terminal_snippet(&hit.snippet, style)
        );
    }
    eprintln!("{} result(s)", page.items.len());
    Ok(())
}

/// How `search` shows the matches in a snippet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Highlight {
    /// Terminal bold (stdout is a terminal and `NO_COLOR` is unset).
    Bold,
    /// No markup at all (a pipe, a file).
    Plain,
}

/// The API's snippet (HTML-escaped, `<mark>` around matches) as terminal
/// text. The text is the tenant's (and may be the agent's): control
/// characters are shown as `\u{FFFD}`, so a message cannot send escape
/// sequences to the operator's terminal.
fn terminal_snippet(html: &str, style: Highlight) -> String {
    const BOLD: &str = "\x1b[1m";
    const RESET: &str = "\x1b[0m";
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(c) = rest.chars().next() {
        let (piece, len): (&str, usize) = if rest.starts_with("<mark>") {
            (if style == Highlight::Bold { BOLD } else { "" }, 6)
        } else if rest.starts_with("</mark>") {
            (if style == Highlight::Bold { RESET } else { "" }, 7)
        } else if let Some((entity, ch)) = [
            ("&amp;", "&"),
            ("&lt;", "<"),
            ("&gt;", ">"),
            ("&quot;", "\""),
            ("&#39;", "'"),
        ]
        .into_iter()
        .find(|(e, _)| rest.starts_with(e))
        {
            (ch, entity.len())
        } else if c.is_control() {
            ("\u{FFFD}", c.len_utf8())
        } else {
            (&rest[..c.len_utf8()], c.len_utf8())
        };
        out.push_str(piece);
        rest = &rest[len..];
    }
    out
}

fn run(config: Config) -> Result<(), String> {
    hermes_tenantd::logging::init_with_file(
        &config.log,
        Some(hermes_tenantd::logging::FileSettings {
            dir: &config.data_dir.join("logs"),
            max_bytes: config.gateway.log_file_bytes,
            keep: config.gateway.log_files,
        }),
    );
    hermes_tenantd::tls::install_provider();
    // Two workers: the daemon is I/O-bound and shares the VM with the agent.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        // Start-up spreads over many blocking threads; idle, each keeps its
        // stack pages and malloc cache. Tokio's default keeps them 10 s,
        // and periodic blocking work (the heap trim, file watchers) can
        // keep several alive for good. A thread costs tens of µs to start
        // again.
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let dev = config.dev;
        let mut signals = Signals::install()?;
        let daemon = Daemon::start(config).await.map_err(|e| e.to_string())?;
        if dev {
            print_dev_banner(&daemon);
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        signals.wait().await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        tracing::info!("shutting down");
        daemon.shutdown().await;
        Ok(())
    })
}

/// SIGTERM / SIGINT handlers, installed before start-up so a signal that
/// arrives while the daemon starts is not fatal: it is seen once the
/// daemon is up, which then shuts down cleanly.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate())
            .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
        let int = signal(SignalKind::interrupt())
            .map_err(|e| format!("cannot install the SIGINT handler: {e}"))?;
        Ok(Signals { term, int })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// What a newcomer needs to call a `--dev` daemon. Printed to stdout, not
/// the log: the credential must not end up in a log pipeline.
fn print_dev_banner(d: &Daemon) {
    let c = &d.state.config;
    let token = std::fs::read_to_string(&c.auth.credential_file).unwrap_or_default();
    let token = token.trim();
    let scheme = if c.listen.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://{}", d.addr);
    println!("hermes-tenantd {} (dev mode)", hermes_tenantd::VERSION);
    println!("  address:    {base}");
    println!("  tenant id:  {}", c.tenant_id);
    println!(
        "  credential: {token}   (from {})",
        c.auth.credential_file.display()
    );
    println!("  data dir:   {}", c.data_dir.display());
    println!("  try:");
    println!(
        "    curl -sS -H 'Authorization: Bearer {token}' {base}/v1/tenant-runtime/{}/version",
        c.tenant_id
    );
}

#[cfg(test)]
mod tests {
    use super::{Highlight, terminal_snippet};

    #[test]
    fn search_snippets_are_bold_on_a_terminal_and_plain_otherwise() {
        let html = "a &lt;b&gt; <mark>hit</mark> &amp; &#39;c&#39; &quot;d&quot;";
        assert_eq!(
            terminal_snippet(html, Highlight::Bold),
            "a <b> \x1b[1mhit\x1b[0m & 'c' \"d\""
        );
        assert_eq!(
            terminal_snippet(html, Highlight::Plain),
            "a <b> hit & 'c' \"d\""
        );
    }

    #[test]
    fn search_snippets_cannot_send_escape_sequences_to_the_terminal() {
        let html = "x\x1b]0;owned\x07y\tz\u{9b}2J";
        let shown = terminal_snippet(html, Highlight::Bold);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "x\u{FFFD}]0;owned\u{FFFD}y\u{FFFD}z\u{FFFD}2J");
        // Text that merely looks like markup after unescaping stays text.
        assert_eq!(terminal_snippet("&lt;mark&gt;", Highlight::Plain), "<mark>");
    }
}
