//! At start, before the supervisor spawns anything: finish what a killed
//! daemon left (an activation in flight is rolled back, a half-built
//! install removed) and make the rows agree with the disk (the `current`
//! pointer is the truth: the role may have switched it, or installed
//! releases the daemon never saw).

use super::layout::{CURRENT, Layout, PREVIOUS, tree_size};
use super::records::{self, Release, ReleaseState};
use crate::store::{Store, StoreError, now_ms};

const INTERRUPTED_SWITCH: &str =
    "the activation was interrupted by a daemon restart; rolled back to the previous release";
const INTERRUPTED_INSTALL: &str = "the install was interrupted by a daemon restart";

/// Run once at start. Errors are the store's; disk trouble is logged.
pub async fn recover(store: &Store, config: &crate::config::Config) -> Result<(), StoreError> {
    let layout = &Layout::new(config.releases.dir.clone());
    if config.gateway.identity.is_separate() && config.releases.dir.starts_with(&config.data_dir) {
        // The data dir is 0700: the agent's user could not run a release.
        tracing::warn!(
            "releases.dir is inside the private data dir, where the agent's own user cannot run a release; set releases.dir (the role uses /opt/hermes-agent)"
        );
    }
    let l = layout.clone();
    let disk = tokio::task::spawn_blocking(move || {
        if let Err(e) = l.prepare() {
            tracing::error!(error = %e, "the agent release directory is not usable; releases are disabled");
            return None;
        }
        let removed = l.remove_unpublished();
        if removed > 0 {
            tracing::info!(removed, "removed agent release builds a killed install left");
        }
        Some(l)
    })
    .await
    .map_err(StoreError::Join)?;
    let Some(layout) = disk else { return Ok(()) };

    // An activation in flight: back to the release that ran before.
    if let Some(sw) = store.read(records::switch).await? {
        let l = layout.clone();
        let (prev, prior) = (sw.previous.clone(), sw.prior_previous.clone());
        let restored = tokio::task::spawn_blocking(move || {
            l.set_pointer(CURRENT, prev.as_deref())?;
            l.set_pointer(PREVIOUS, prior.as_deref())
        })
        .await
        .map_err(StoreError::Join)?;
        if let Err(e) = restored {
            tracing::error!(error = %e, "cannot restore the agent release pointers");
        }
        let target = sw.target.clone();
        store
            .write(move |c| {
                let tx = c.transaction()?;
                if let Some(r) = records::get(&tx, &target)? {
                    if !matches!(r.state, ReleaseState::Failed | ReleaseState::Quarantined) {
                        records::set_state(
                            &tx,
                            &target,
                            ReleaseState::Ready,
                            Some(INTERRUPTED_SWITCH),
                            now_ms(),
                        )?;
                    }
                }
                records::end_switch(&tx)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        tracing::warn!(release = %sw.target, back_to = ?sw.previous, "an agent release activation was interrupted; rolled back");
    }

    let l = layout.clone();
    let (current, on_disk) = tokio::task::spawn_blocking(move || {
        let current = l.pointer(CURRENT).filter(|v| l.installed(v));
        let on_disk: Vec<(String, u64, Option<i64>)> = l
            .versions()
            .into_iter()
            .map(|v| {
                let path = l.release(&v);
                let size = std::fs::canonicalize(&path)
                    .map(|p| tree_size(&p))
                    .unwrap_or(0);
                let mtime = std::fs::metadata(&path).ok().map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.mtime().saturating_mul(1000)
                });
                (v, size, mtime)
            })
            .collect();
        (current, on_disk)
    })
    .await
    .map_err(StoreError::Join)?;
    store
        .write(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            for r in records::list(&tx)? {
                let present = on_disk.iter().any(|(v, _, _)| *v == r.version);
                match r.state {
                    ReleaseState::Installing if present => {
                        // Published (verified) just before the daemon died.
                        let size = on_disk
                            .iter()
                            .find(|(v, _, _)| *v == r.version)
                            .map(|x| x.1);
                        let ready = Release {
                            state: ReleaseState::Ready,
                            installed_at_ms: Some(now),
                            size,
                            ..r.clone()
                        };
                        records::put(&tx, &ready, now)?
                    }
                    ReleaseState::Installing => records::set_state(
                        &tx,
                        &r.version,
                        ReleaseState::Failed,
                        Some(INTERRUPTED_INSTALL),
                        now,
                    )?,
                    ReleaseState::Active if current.as_deref() != Some(r.version.as_str()) => {
                        records::set_state(&tx, &r.version, ReleaseState::Ready, None, now)?
                    }
                    _ => {}
                }
            }
            // Releases the role installed: known from now on.
            for (v, size, mtime) in &on_disk {
                if records::get(&tx, v)?.is_none() {
                    let r = Release {
                        version: v.clone(),
                        state: ReleaseState::Ready,
                        sha256: None,
                        installed_at_ms: Some(mtime.unwrap_or(now)),
                        size: Some(*size),
                        last_error: None,
                        gate_failures: 0,
                    };
                    records::put(&tx, &r, now)?;
                }
            }
            if let Some(v) = &current {
                records::make_active(&tx, v, now)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    Ok(())
}
