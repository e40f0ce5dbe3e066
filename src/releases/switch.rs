//! Activation behind the health gate, and the rollback that follows a
//! failed gate or a crash loop in the watch window.
//!
//! The persisted steps (`agent_release_switch`): the row is written before
//! the gateway is touched and deleted in the transaction that records the
//! outcome. A daemon killed anywhere in between finds the row at start and
//! points `current` back at the release that ran before
//! (`recover::recover`): after a restart the old release or the new one
//! (once its gate passed and was recorded) runs, never none.

use std::time::Duration;

use tokio::time::Instant;

use super::layout::{CURRENT, PREVIOUS};
use super::records::{self, ReleaseState, Switch};
use super::{Ctx, scrub};
use crate::agent::{AgentCommand, AgentState, Desired};
use crate::store::now_ms;

/// A test build (debug) stops dead at a named step when
/// `TENANTD_TEST_KILL_AT` says so: what `kill -9` at that moment does.
/// Not compiled into release builds.
pub(super) fn kill_point(step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("TENANTD_TEST_KILL_AT").as_deref() == Ok(step) {
        tracing::warn!(step, "test hook: the daemon kills itself here");
        // SAFETY: SIGKILL to ourselves; no memory is involved.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

/// What an activation came to.
#[derive(Debug, PartialEq)]
pub(super) enum Outcome {
    /// The gate passed: watch it for `releases.watch_window`.
    Active,
    /// Already the active release.
    Unchanged,
    /// Rolled back; the release is now in this state.
    RolledBack(ReleaseState),
    /// Not attempted (the message says why).
    Refused(String),
}

/// Switch to `version` behind the health gate; roll back on failure.
pub(super) async fn activate(ctx: &Ctx, version: &str) -> Outcome {
    let _one = ctx.switching.lock().await;
    let row = match ctx.get(version).await {
        Ok(Some(r)) => r,
        Ok(None) => return Outcome::Refused("unknown release".into()),
        Err(e) => return Outcome::Refused(format!("store: {e}")),
    };
    match row.state {
        ReleaseState::Ready | ReleaseState::Failed | ReleaseState::Active => {}
        ReleaseState::Installing | ReleaseState::Quarantined => {
            return Outcome::Refused(format!("the release is {}", row.state.as_str()));
        }
    }
    let (layout, v) = (ctx.layout.clone(), version.to_owned());
    let Ok((installed, current, prior_previous)) = tokio::task::spawn_blocking(move || {
        (
            layout.installed(&v),
            layout.pointer(CURRENT),
            layout.pointer(PREVIOUS),
        )
    })
    .await
    else {
        return Outcome::Refused("layout read failed".into());
    };
    if !installed {
        return Outcome::Refused("the release is not installed".into());
    }
    if current.as_deref() == Some(version) && row.state == ReleaseState::Active {
        return Outcome::Unchanged;
    }
    if ctx.agent.status().desired == Desired::Stopped {
        return Outcome::Refused(
            "the agent is stopped; its release is switched when it runs".into(),
        );
    }
    let switch = Switch {
        target: version.to_owned(),
        previous: current.filter(|c| c != version),
        prior_previous,
    };
    let s = switch.clone();
    if let Err(e) = ctx
        .store
        .write(move |c| records::begin_switch(c, &s, now_ms()))
        .await
    {
        return Outcome::Refused(format!("cannot record the switch: {e}"));
    }
    kill_point("switch_recorded");
    tracing::info!(release = version, previous = ?switch.previous, "activating an agent release");

    // The old gateway goes down only when no run is in flight (bounded);
    // new runs wait for the new one.
    let gate = crate::hub::decision::quiesce(
        &ctx.link,
        ctx.wait_for_runs,
        "an agent release is being activated",
    )
    .await;
    let started = Instant::now();
    if let Err(e) = point(ctx, switch.previous.as_deref(), Some(version)).await {
        drop(gate);
        let reason = format!("cannot switch the current pointer: {e}");
        return rollback(ctx, &switch, &reason, started).await;
    }
    kill_point("pointer_switched");
    let before = ctx.agent.status();
    if ctx
        .agent
        .send(AgentCommand::Restart, before.desired_by)
        .await
        .is_err()
    {
        return Outcome::Refused("the supervisor is gone".into());
    }
    kill_point("gateway_restarted");
    let mut verdict = wait_gate(ctx, version, before.pid, ctx.cfg.gate_timeout).await;
    if let (Ok(()), Some(input)) = (&verdict, ctx.cfg.smoke_input.as_deref()) {
        let t = Instant::now();
        verdict = smoke(ctx, input, ctx.cfg.smoke_timeout).await;
        if verdict.is_ok() {
            tracing::info!(
                release = version,
                ms = t.elapsed().as_millis() as u64,
                "the smoke run of the health gate completed"
            );
        }
    }
    drop(gate);
    match verdict {
        Ok(()) => {
            kill_point("gate_passed");
            let v = version.to_owned();
            let done = ctx
                .store
                .write(move |c| {
                    let tx = c.transaction()?;
                    records::make_active(&tx, &v, now_ms())?;
                    records::end_switch(&tx)?;
                    tx.commit()?;
                    Ok(())
                })
                .await;
            if let Err(e) = done {
                // Unrecorded: the next start rolls back to the previous one.
                tracing::error!(error = %e, "cannot record the activated release");
            }
            kill_point("activation_recorded");
            tracing::info!(
                release = version,
                down_ms = started.elapsed().as_millis() as u64,
                "agent release active: its health gate passed"
            );
            Outcome::Active
        }
        Err(reason) => rollback(ctx, &switch, &reason, started).await,
    }
}

/// Roll a failed activation (or a crash loop in the watch window) back to
/// `switch.previous`, recording the failure first.
pub(super) async fn rollback(ctx: &Ctx, switch: &Switch, reason: &str, since: Instant) -> Outcome {
    let reason = scrub(reason);
    tracing::warn!(release = %switch.target, reason = %reason, back_to = ?switch.previous, "agent release failed; rolling back");
    let (s, r, q) = (switch.clone(), reason.clone(), ctx.cfg.quarantine_after);
    let state = ctx
        .store
        .write(move |c| {
            let tx = c.transaction()?;
            // The row stays until the rollback is done (a crash meanwhile
            // finishes it at start).
            records::begin_switch(&tx, &s, now_ms())?;
            let st = records::record_failure(&tx, &s.target, &r, q, now_ms())?;
            // After a watch-window failure the previous one was `ready`.
            if let Some(p) = &s.previous {
                records::make_active(&tx, p, now_ms())?;
            }
            tx.commit()?;
            Ok(st)
        })
        .await
        .unwrap_or(ReleaseState::Failed);
    kill_point("failure_recorded");
    let gate = crate::hub::decision::hold_gate(&ctx.link);
    if let Err(e) = point(
        ctx,
        switch.prior_previous.as_deref(),
        switch.previous.as_deref(),
    )
    .await
    {
        tracing::error!(error = %e, "cannot point current back at the previous release");
    }
    kill_point("pointer_restored");
    let before = ctx.agent.status();
    if before.desired == Desired::Running {
        let _ = ctx
            .agent
            .send(AgentCommand::Restart, before.desired_by)
            .await;
        let back = ctx
            .agent
            .wait_for(
                |s| s.state == AgentState::Running && s.pid.is_some() && s.pid != before.pid,
                ctx.cfg.gate_timeout,
            )
            .await;
        if back.is_err() {
            tracing::error!(
                back_to = ?switch.previous,
                "the previous agent release did not come back within releases.gate_timeout"
            );
        }
    }
    drop(gate);
    let _ = ctx.store.write(|c| records::end_switch(c)).await;
    tracing::info!(
        release = %switch.target,
        state = state.as_str(),
        rollback_ms = since.elapsed().as_millis() as u64,
        "agent release rolled back"
    );
    Outcome::RolledBack(state)
}

/// `previous` then `current` (a crash between the two leaves `current`
/// unchanged, which recovery handles like any interrupted switch).
async fn point(ctx: &Ctx, previous: Option<&str>, current: Option<&str>) -> std::io::Result<()> {
    let (l, p, c) = (
        ctx.layout.clone(),
        previous.map(str::to_owned),
        current.map(str::to_owned),
    );
    tokio::task::spawn_blocking(move || {
        l.set_pointer(PREVIOUS, p.as_deref())?;
        l.set_pointer(CURRENT, c.as_deref())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The health gate: a new gateway process `running` (its `/health`
/// answered), its capabilities probed, reporting `version` if it reports
/// one, within `timeout`. An exit, a crash or a `failed` state before that
/// fails it at once.
async fn wait_gate(
    ctx: &Ctx,
    version: &str,
    old_pid: Option<u32>,
    timeout: Duration,
) -> Result<(), String> {
    let mut rx = ctx.agent.subscribe();
    let deadline = Instant::now() + timeout;
    loop {
        {
            let s = rx.borrow_and_update();
            let new = s.pid.is_some() && s.pid != old_pid;
            if s.desired == Desired::Stopped {
                return Err("the agent was stopped during the health gate".into());
            }
            match s.state {
                AgentState::Running if new && s.capabilities.is_some() => {
                    return match &s.release {
                        Some(r) if r != version => {
                            Err(format!("the gateway reports version {r}, not {version}"))
                        }
                        _ => Ok(()),
                    };
                }
                AgentState::Failed | AgentState::Backoff => {
                    let why = s
                        .last_exit
                        .as_ref()
                        .map(|e| match (e.code, e.signal) {
                            (Some(c), _) => format!("exited ({}, code {c})", e.reason),
                            (None, Some(sig)) => format!("exited ({}, signal {sig})", e.reason),
                            _ => format!("exited ({})", e.reason),
                        })
                        .or_else(|| s.last_error.clone())
                        .unwrap_or_else(|| s.state.as_str().to_owned());
                    return Err(format!("the new release did not get healthy: {why}"));
                }
                _ => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                let s = ctx.agent.status();
                return Err(format!(
                    "health gate timed out after {} (state {}{})",
                    humantime::format_duration(timeout),
                    s.state.as_str(),
                    if s.state == AgentState::Running { ", capabilities not answered" } else { "" },
                ));
            }
            r = rx.changed() => if r.is_err() {
                return Err("the supervisor is gone".into());
            },
        }
    }
}

/// The gate's optional smoke run (`releases.smoke_input`): the input as a
/// run of the new gateway (straight to it: clients' runs wait behind the
/// gate), which must end `run.completed` within `timeout`. The gateway
/// keeps it in its own history like any run (`api_server` source).
async fn smoke(ctx: &Ctx, input: &str, timeout: Duration) -> Result<(), String> {
    let run = async {
        let id = ctx
            .gateway
            .submit(&serde_json::json!({ "input": input }))
            .await
            .map_err(|e| format!("the smoke run was not accepted: {e}"))?;
        let body = ctx
            .gateway
            .events(&id)
            .await
            .map_err(|e| format!("the smoke run's events could not be read: {e}"))?;
        let mut end: Option<String> = None;
        crate::runs::gateway::for_each_frame(Box::pin(body), |frame| {
            let name = frame.event.clone().or_else(|| {
                serde_json::from_str::<serde_json::Value>(&frame.data)
                    .ok()
                    .and_then(|v| v["event"].as_str().map(str::to_owned))
            });
            match name {
                Some(n) if crate::runs::is_terminal_event(&n) => {
                    end = Some(n);
                    false
                }
                _ => true,
            }
        })
        .await
        .map_err(|e| format!("the smoke run's events broke off: {e}"))?;
        match end.as_deref() {
            Some("run.completed") => Ok(()),
            Some(other) => Err(format!("the smoke run ended {other}")),
            None => Err("the smoke run's events ended without its end".to_owned()),
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "the smoke run did not end within releases.smoke_timeout ({})",
            humantime::format_duration(timeout)
        )),
    }
}
