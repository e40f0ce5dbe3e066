//! hermes-tenantd: the per-VM daemon of a hosted Hermes Agent platform.
//! See `ARCHITECTURE.md` for the map of modules.

pub mod agent;
pub mod agent_file;
pub mod allocator;
pub mod api;
pub mod auth;
pub mod bounded_yaml;
pub mod config;
pub mod cron;
pub mod daemon;
pub mod dir_handle;
pub mod env_apply;
pub mod envfile;
pub mod error;
pub mod files;
pub mod hex;
pub mod history_sync;
pub mod hub;
pub mod identity;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod releases;
pub mod runs;
pub mod secret_sources;
pub mod settings;
pub mod skills;
pub mod store;
pub mod supervisor;
pub mod timestamp;
pub mod tls;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
