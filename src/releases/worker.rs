//! The one worker task: installs and switches one at a time from the
//! bounded queue, watches a newly active release for a crash loop within
//! `releases.watch_window`, applies the hub's desired release, prunes.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::records::{self, Release, ReleaseState, Switch};
use super::{Ctx, DESIRED_KEY, Job, install, layout, refresh, scrub, switch};
use crate::agent::{AgentState, Desired};
use crate::store::now_ms;

/// The newly active release, watched for a crash loop until `until`.
struct Watching {
    version: String,
    previous: Option<String>,
    until: Instant,
}

pub(super) async fn worker(
    ctx: Arc<Ctx>,
    mut jobs: mpsc::Receiver<Job>,
    cancel: CancellationToken,
) {
    refresh(&ctx).await;
    let mut status = ctx.agent.subscribe();
    let mut watching: Option<Watching> = None;
    // A desired release that waits for the agent to run.
    let mut pending: Option<(String, Option<String>)> = None;
    loop {
        let watch_end = watching.as_ref().map(|w| w.until);
        tokio::select! {
            _ = cancel.cancelled() => return,
            job = jobs.recv() => {
                let Some(job) = job else { return };
                let outcome = tokio::select! {
                    _ = cancel.cancelled() => return,
                    o = run_job(&ctx, job, &mut pending) => o,
                };
                if let Some(w) = outcome {
                    watching = Some(w);
                }
                refresh(&ctx).await;
            }
            _ = async { tokio::time::sleep_until(watch_end.unwrap_or_else(Instant::now)).await }, if watch_end.is_some() => {
                if let Some(w) = watching.take() {
                    tracing::info!(release = %w.version, "agent release survived its watch window");
                }
            }
            r = status.changed() => {
                if r.is_err() { return; }
                let (failed_loop, running) = {
                    let s = status.borrow_and_update();
                    (
                        s.state == AgentState::Failed && s.reason.as_deref() == Some("crash_loop"),
                        s.desired == Desired::Running,
                    )
                };
                if failed_loop {
                    if let Some(w) = watching.take() {
                        let sw = Switch { target: w.version, previous: w.previous, prior_previous: None };
                        let reason = format!(
                            "crash loop within releases.watch_window ({}) after activation",
                            humantime::format_duration(ctx.cfg.watch_window)
                        );
                        switch::rollback(&ctx, &sw, &reason, Instant::now()).await;
                        refresh(&ctx).await;
                    }
                }
                if running {
                    if let Some((v, h)) = pending.take() {
                        if let Some(w) = run_job(&ctx, Job::Desired { version: v, sha256: h }, &mut pending).await {
                            watching = Some(w);
                        }
                        refresh(&ctx).await;
                    }
                }
            }
        }
    }
}

async fn run_job(
    ctx: &Ctx,
    job: Job,
    pending: &mut Option<(String, Option<String>)>,
) -> Option<Watching> {
    match job {
        Job::Install { version, sha256 } => {
            do_install(ctx, &version, sha256.as_deref()).await;
            None
        }
        Job::Activate { version } => do_activate(ctx, &version).await,
        Job::Desired { version, sha256 } => {
            let persisted = ctx.store.get_state(DESIRED_KEY).await.ok().flatten();
            if persisted.as_deref() == Some(version.as_str()) {
                return None;
            }
            let row = ctx.get(&version).await.ok().flatten();
            let installed = row.as_ref().is_some_and(|r| {
                r.state != ReleaseState::Installing
                    && (r.state != ReleaseState::Failed || r.installed_at_ms.is_some())
            });
            if row
                .as_ref()
                .is_some_and(|r| r.state == ReleaseState::Quarantined)
            {
                tracing::warn!(release = %version, "the hub wants a quarantined agent release; not retried (DELETE and POST it to clear)");
                let _ = ctx.store.set_state(DESIRED_KEY, version).await;
                return None;
            }
            if !installed {
                if row.is_none()
                    || row
                        .as_ref()
                        .is_some_and(|r| r.state == ReleaseState::Failed)
                {
                    let r = Release {
                        version: version.clone(),
                        state: ReleaseState::Installing,
                        sha256: sha256.clone(),
                        installed_at_ms: None,
                        size: None,
                        last_error: None,
                        gate_failures: row.as_ref().map_or(0, |r| r.gate_failures),
                    };
                    if ctx
                        .store
                        .write(move |c| records::put(c, &r, now_ms()))
                        .await
                        .is_err()
                    {
                        return None;
                    }
                    refresh(ctx).await;
                }
                if !do_install(ctx, &version, sha256.as_deref()).await {
                    // Reported; a new desired value (or a re-POST) retries.
                    let _ = ctx.store.set_state(DESIRED_KEY, version).await;
                    return None;
                }
            }
            if ctx.agent.status().desired == Desired::Stopped {
                tracing::info!(release = %version, "the hub's agent release waits for the agent to run");
                *pending = Some((version, sha256));
                return None;
            }
            let w = do_activate(ctx, &version).await;
            let _ = ctx.store.set_state(DESIRED_KEY, version).await;
            w
        }
    }
}

/// Install one release whose row says `installing`; prune afterwards.
async fn do_install(ctx: &Ctx, version: &str, sha256: Option<&str>) -> bool {
    match ctx.get(version).await {
        Ok(Some(r)) if r.state == ReleaseState::Installing => {}
        _ => return false,
    }
    tracing::info!(release = version, "installing an agent release");
    let started = Instant::now();
    let result = install::install(&ctx.cfg, &ctx.layout, version, sha256).await;
    switch::kill_point("install_published");
    let v = version.to_owned();
    let ok = result.is_ok();
    let write = ctx
        .store
        .write(move |c| {
            let now = now_ms();
            let Some(mut r) = records::get(c, &v)? else {
                return Ok(());
            };
            match result {
                Ok(done) => {
                    r.state = ReleaseState::Ready;
                    r.installed_at_ms = Some(now);
                    r.size = Some(done.size);
                    r.last_error = None;
                }
                Err(e) => {
                    r.state = ReleaseState::Failed;
                    r.last_error = Some(scrub(&e));
                }
            }
            records::put(c, &r, now)
        })
        .await;
    if let Err(e) = write {
        tracing::error!(error = %e, "cannot record an agent release install");
    }
    if ok {
        tracing::info!(
            release = version,
            took_ms = started.elapsed().as_millis() as u64,
            "agent release installed"
        );
        // The new release is kept: it was installed to be activated.
        prune(ctx, Some(version)).await;
    } else {
        tracing::warn!(release = version, "agent release install failed");
    }
    ok
}

async fn do_activate(ctx: &Ctx, version: &str) -> Option<Watching> {
    match switch::activate(ctx, version).await {
        switch::Outcome::Active => {
            let l = ctx.layout.clone();
            let previous = tokio::task::spawn_blocking(move || l.pointer(layout::PREVIOUS))
                .await
                .ok()
                .flatten();
            prune(ctx, None).await;
            Some(Watching {
                version: version.to_owned(),
                previous,
                until: Instant::now() + ctx.cfg.watch_window,
            })
        }
        switch::Outcome::Unchanged | switch::Outcome::RolledBack(_) => None,
        switch::Outcome::Refused(why) => {
            tracing::warn!(release = version, reason = %scrub(&why), "agent release not activated");
            None
        }
    }
}

/// Keep `releases.keep` installed releases: the current and the previous
/// always, then the newest. Quarantined rows stay (their files go) so the
/// quarantine stands until the hub clears it.
async fn prune(ctx: &Ctx, protect: Option<&str>) {
    let Ok(rows) = ctx.store.read(records::list).await else {
        return;
    };
    let l = ctx.layout.clone();
    let keep = ctx.cfg.keep;
    let protect = protect.map(str::to_owned);
    let removed = tokio::task::spawn_blocking(move || {
        let current = l.pointer(layout::CURRENT);
        let previous = l.pointer(layout::PREVIOUS);
        let mut kept = [&current, &previous].iter().filter(|v| v.is_some()).count();
        let mut removed = Vec::new();
        // `list` is newest first.
        for r in rows.iter().filter(|r| r.installed_at_ms.is_some() && l.installed(&r.version)) {
            if Some(&r.version) == current.as_ref()
                || Some(&r.version) == previous.as_ref()
                || Some(&r.version) == protect.as_ref()
            {
                continue;
            }
            if r.state == ReleaseState::Installing {
                continue;
            }
            if kept < keep && r.state != ReleaseState::Quarantined {
                kept += 1;
                continue;
            }
            match l.remove(&r.version) {
                Ok(()) => removed.push((r.version.clone(), r.state)),
                Err(e) => tracing::warn!(release = %r.version, error = %e, "cannot prune an agent release"),
            }
        }
        removed
    })
    .await
    .unwrap_or_default();
    if removed.is_empty() {
        return;
    }
    let _ = ctx
        .store
        .write(move |c| {
            let tx = c.transaction()?;
            for (v, state) in &removed {
                if *state == ReleaseState::Quarantined {
                    tx.execute(
                        "UPDATE agent_releases SET installed_at_ms = NULL, size_bytes = NULL WHERE version = ?1",
                        [v],
                    )?;
                } else {
                    records::delete(&tx, v)?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await;
}
