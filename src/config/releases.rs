//! `[releases]`: agent releases installed and switched by the daemon.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::raw::lenient;
use super::validate::{absolute, duration, http_url, non_empty, non_empty_path};
use super::{ConfigError, invalid};

/// Agent releases (`[releases]`).
#[derive(Debug, Clone)]
pub struct ReleasesConfig {
    /// Where releases live side by side (`<dir>/<version>/`, `current`,
    /// `previous`). Default `DATA_DIR/releases`; with a separate agent user
    /// it must be a directory the agent can traverse (the role uses
    /// `/opt/hermes-agent`), since the data dir is private.
    pub dir: PathBuf,
    /// `pip --index-url` (default: pip's own, PyPI).
    pub index_url: Option<String>,
    /// `pip --find-links` (a wheel directory or URL); with no `index_url`
    /// pip also gets `--no-index`, so a wheel directory alone is offline.
    pub find_links: Option<String>,
    /// The interpreter that creates a release's virtualenv.
    pub python: PathBuf,
    /// Releases kept on disk; the current and previous ones are never pruned.
    pub keep: usize,
    /// How long a newly started release has to be running, answer `/health`
    /// and its capabilities probe.
    pub gate_timeout: Duration,
    /// A crash loop this soon after an activation rolls it back.
    pub watch_window: Duration,
    /// The input of a run the health gate asks a new release for, after
    /// its health and capabilities: it passes only if that run ends
    /// `run.completed` within `smoke_timeout`. None (the default): no run.
    pub smoke_input: Option<String>,
    /// How long the smoke run may take.
    pub smoke_timeout: Duration,
    /// Failed gates after which a release is `quarantined`.
    pub quarantine_after: u32,
    /// Longest pip run of one install.
    pub install_timeout: Duration,
    /// Free bytes the release volume must have before an install.
    pub min_free_bytes: u64,
    /// Installed beside `hermes-agent` in every release (default `aiohttp`:
    /// hermes-agent 0.19.0 needs it for its API server but does not depend
    /// on it).
    pub extra_packages: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawReleases {
    pub(super) dir: Option<PathBuf>,
    pub(super) index_url: Option<String>,
    pub(super) find_links: Option<String>,
    pub(super) python: Option<PathBuf>,
    #[serde(deserialize_with = "lenient")]
    pub(super) keep: Option<usize>,
    pub(super) gate_timeout: Option<String>,
    pub(super) watch_window: Option<String>,
    pub(super) smoke_input: Option<String>,
    pub(super) smoke_timeout: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub(super) quarantine_after: Option<u32>,
    pub(super) install_timeout: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub(super) min_free_bytes: Option<u64>,
    pub(super) extra_packages: Option<super::raw::ListOrCsv>,
}

/// Default free space before an install: a hermes-agent 0.19.0 venv is
/// about 240 MB; twice that plus room for the store.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 1024 * 1024 * 1024;

pub(super) fn validate(raw: RawReleases, data_dir: &Path) -> Result<ReleasesConfig, ConfigError> {
    let dir = non_empty_path(raw.dir)
        .map(|d| absolute(&d))
        .unwrap_or_else(|| data_dir.join("releases"));
    let index_url = match non_empty(raw.index_url) {
        Some(u) => Some(http_url("releases.index_url", u)?),
        None => None,
    };
    let find_links = non_empty(raw.find_links);
    if let Some(f) = &find_links {
        if f.starts_with('-') {
            return Err(invalid("releases.find_links", "must be a path or a URL"));
        }
    }
    let keep = raw.keep.unwrap_or(2);
    if !(2..=20).contains(&keep) {
        return Err(invalid(
            "releases.keep",
            "must be between 2 and 20 (the current and the previous release are always kept)",
        ));
    }
    let quarantine_after = raw.quarantine_after.unwrap_or(2);
    if !(1..=100).contains(&quarantine_after) {
        return Err(invalid(
            "releases.quarantine_after",
            "must be between 1 and 100",
        ));
    }
    let extra_packages = match raw.extra_packages {
        Some(l) => l.into_vec(),
        None => vec!["aiohttp".to_owned()],
    };
    for p in &extra_packages {
        let ok = !p.is_empty()
            && p.len() <= 200
            && p.as_bytes()[0].is_ascii_alphanumeric()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-=<>!~,[]".contains(&b));
        if !ok {
            return Err(invalid(
                "releases.extra_packages",
                format!("`{p}` is not a requirement like `aiohttp` or `aiohttp>=3.9`"),
            ));
        }
    }
    let smoke_input = non_empty(raw.smoke_input);
    if smoke_input
        .as_ref()
        .is_some_and(|s| s.chars().count() > 4096)
    {
        return Err(invalid(
            "releases.smoke_input",
            "must be at most 4096 characters",
        ));
    }
    Ok(ReleasesConfig {
        dir,
        index_url,
        find_links,
        python: non_empty_path(raw.python).unwrap_or_else(|| PathBuf::from("python3")),
        keep,
        gate_timeout: duration("releases.gate_timeout", raw.gate_timeout, "120s")?,
        watch_window: duration("releases.watch_window", raw.watch_window, "10m")?,
        smoke_input,
        smoke_timeout: duration("releases.smoke_timeout", raw.smoke_timeout, "120s")?,
        quarantine_after,
        install_timeout: duration("releases.install_timeout", raw.install_timeout, "15m")?,
        min_free_bytes: raw.min_free_bytes.unwrap_or(DEFAULT_MIN_FREE_BYTES),
        extra_packages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawReleases {
        toml::from_str(toml_text).expect("shape")
    }

    #[test]
    fn defaults_and_refusals_name_their_key() {
        let c = validate(raw(""), Path::new("/var/lib/d")).expect("defaults");
        assert_eq!(c.dir, Path::new("/var/lib/d/releases"));
        assert_eq!((c.keep, c.quarantine_after), (2, 2));
        assert_eq!(c.gate_timeout, Duration::from_secs(120));
        assert_eq!(c.watch_window, Duration::from_secs(600));
        assert_eq!(c.extra_packages, vec!["aiohttp"]);
        assert!(c.index_url.is_none() && c.find_links.is_none());
        let c = validate(
            raw("dir = \"/opt/hermes-agent\"\nextra_packages = []\nkeep = \"3\"\n"),
            Path::new("/d"),
        )
        .expect("valid");
        assert_eq!(c.dir, Path::new("/opt/hermes-agent"));
        assert!(c.extra_packages.is_empty());
        assert_eq!(c.keep, 3);
        for (text, key) in [
            ("keep = 1", "releases.keep"),
            ("quarantine_after = 0", "releases.quarantine_after"),
            ("index_url = \"ftp://x\"", "releases.index_url"),
            ("find_links = \"--pre\"", "releases.find_links"),
            (
                "extra_packages = [\"x; rm -rf /\"]",
                "releases.extra_packages",
            ),
            ("gate_timeout = \"0s\"", "releases.gate_timeout"),
            ("smoke_timeout = \"0s\"", "releases.smoke_timeout"),
        ] {
            let e = validate(raw(text), Path::new("/d")).expect_err(text);
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }
}
