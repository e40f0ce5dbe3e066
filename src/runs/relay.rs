//! The relay of one run: wake the agent, submit, read the gateway's event
//! stream, number and log every event, fan it out, and record the result.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use super::frames::{Burst, FrameRelay, observe, update};
use super::gateway::{GatewayError, SseParser, capabilities_have_runs};
use super::record::{self, MAX_OUTPUT_BYTES, Outcome, now_secs};
use super::sequencer::{Sequencer, spawn_writer};
use super::{ActiveRun, Runs, StartRun};
use crate::agent::{AgentCommand, AgentState, Desired, DesiredBy};
use crate::store::runs::{RunUpdate, push_capped};

pub(super) async fn drive(
    runs: Arc<Runs>,
    run_id: String,
    active: Arc<ActiveRun>,
    req: StartRun,
    session_id: String,
    queue_permit: OwnedSemaphorePermit,
) {
    let (writer, writer_task) = spawn_writer(runs.store.clone(), run_id.clone(), active.clone());
    let mut seq = Sequencer::new(active.clone(), writer);
    let mut outcome = Outcome::default();
    let result = relay(
        &runs,
        &run_id,
        &active,
        &req,
        &session_id,
        queue_permit,
        &mut seq,
        &mut outcome,
    )
    .await;
    if let Err((mut code, mut message)) = result {
        if runs.shutdown.is_cancelled() && code == "agent_restarted" {
            // The daemon is stopping; the next start closes this run.
            seq.flush().await;
            drop(seq);
            let _ = writer_task.await;
            return;
        }
        if code == "agent_restarted" && *runs.suspended.borrow() {
            // A suspension stops the agent at once: say why the run ended.
            code = "suspended".into();
            message = "the tenant was suspended; the agent was stopped".into();
        }
        // The chat fallback names the run by the daemon's own id.
        let gid = active
            .gateway_run_id
            .borrow()
            .clone()
            .filter(|g| *g != run_id);
        let name = if code == "cancelled" {
            "run.cancelled"
        } else {
            "run.failed"
        };
        let mut data = json!({"event": name, "run_id": run_id, "gateway_run_id": gid, "timestamp": now_secs()});
        if code != "cancelled" {
            data["error"] = json!(message);
            data["code"] = json!(code);
        }
        seq.emit(name, data.to_string()).await;
        outcome.status = Some(if code == "cancelled" {
            "cancelled"
        } else {
            "failed"
        });
        if code != "cancelled" {
            outcome.error = Some((code, message));
        }
    }
    // Every event is committed before the run is marked finished.
    drop(seq);
    let _ = writer_task.await;
    let platform = req.platform.clone().unwrap_or_else(|| "api".into());
    if let Err(e) = record::finish(&runs.store, &run_id, &session_id, platform, outcome).await {
        tracing::error!(run_id, error = %e, "cannot record the end of a run");
    }
    active.finished.send_replace(true);
    if let Ok(mut map) = runs.active.lock() {
        map.remove(&run_id);
    }
}

type RelayResult = Result<(), (String, String)>;

#[allow(clippy::too_many_arguments)]
async fn relay(
    runs: &Arc<Runs>,
    run_id: &str,
    active: &Arc<ActiveRun>,
    req: &StartRun,
    session_id: &str,
    queue_permit: OwnedSemaphorePermit,
    seq: &mut Sequencer,
    outcome: &mut Outcome,
) -> RelayResult {
    wait_for_agent(runs, active, waker(req)).await?;
    let runs_api = match runs.agent.status().capabilities {
        Some(c) => capabilities_have_runs(&c),
        None => runs.gateway.has_runs_api().await,
    };
    if !runs_api {
        drop(queue_permit);
        return chat_fallback(runs, run_id, active, req, session_id, seq, outcome).await;
    }
    let mut body = json!({"input": req.input, "session_id": session_id});
    if let Some(i) = &req.instructions {
        body["instructions"] = json!(i);
    }
    if let Some(h) = &req.conversation_history {
        body["conversation_history"] = h.clone();
    }
    let gid = loop {
        match runs.gateway.submit(&body).await {
            Ok(gid) => break gid,
            Err(GatewayError::RateLimited { retry_after }) => {
                tokio::select! {
                    _ = tokio::time::sleep(retry_after.min(Duration::from_secs(30))) => {}
                    _ = active.cancel_queued.cancelled() => return Err(("cancelled".into(), String::new())),
                }
            }
            Err(GatewayError::Unavailable(_)) => {
                // Draining or restarting: wait for the agent to be back.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = active.cancel_queued.cancelled() => return Err(("cancelled".into(), String::new())),
                }
                wait_for_agent(runs, active, waker(req)).await?;
            }
            Err(GatewayError::Rejected { message, .. }) => {
                return Err(("gateway_rejected".into(), message));
            }
            Err(GatewayError::Other(m)) => return Err(("gateway_error".into(), m)),
            // Never retried: the key stays home until the supervisor has
            // its own gateway on the port again.
            Err(GatewayError::NotOurs(m)) => return Err(("agent_unavailable".into(), m)),
        }
    };
    drop(queue_permit);
    active.gateway_run_id.send_replace(Some(gid.clone()));
    // A stop that came while the run was being submitted found no gateway
    // id and cancelled the token; the id is published now, so pass it on.
    if active.cancel_queued.is_cancelled() && !runs.shutdown.is_cancelled() {
        active.stop_requested.store(true, Ordering::Relaxed);
        if let Err(e) = runs.gateway.stop(&gid).await {
            tracing::warn!(run_id, error = %e, "cannot stop a run the agent just accepted");
        }
    }
    update(
        &runs.store,
        run_id,
        RunUpdate {
            status: Some("running"),
            gateway_run_id: Some(gid.clone()),
            started: true,
            ..Default::default()
        },
    )
    .await;

    let stream = runs.gateway.events(&gid).await.map_err(|e| {
        (
            "agent_restarted".to_string(),
            format!("the agent lost the run: {e}"),
        )
    })?;
    let mut stream = Box::pin(stream);
    let mut frames = FrameRelay::new(&runs.store, run_id, &gid, active);
    loop {
        let chunk = tokio::select! {
            c = stream.next() => c,
            _ = runs.shutdown.cancelled() => return Err(("agent_restarted".into(), "the daemon is stopping".into())),
        };
        let Some(chunk) = chunk else { break };
        let Ok(chunk) = chunk else { break };
        let Burst { taken, ended } = frames.burst(&chunk, &mut stream, seq, outcome).await;
        if ended && matches!(taken, Ok(false)) {
            break;
        }
        match taken {
            Ok(false) => {}
            Ok(true) => return Ok(()),
            Err(_) => {
                return Err((
                    "gateway_error".into(),
                    "the agent sent an oversized event".into(),
                ));
            }
        }
    }
    // The stream ended without a terminal event: the gateway died or
    // restarted and its in-memory run is gone.
    Err((
        "agent_restarted".into(),
        "the agent stopped or restarted before the run finished".into(),
    ))
}

/// On whose behalf a run wakes the agent: a cron firing's run says so by
/// its platform, every other run is the tenant's.
fn waker(req: &StartRun) -> DesiredBy {
    match req.platform.as_deref() {
        Some("cron") => DesiredBy::Cron,
        _ => DesiredBy::Run,
    }
}

/// Wait until the agent is running, waking it if it is stopped by desire.
/// The wake is a newer decision than the hub's last one: it stands until
/// the hub changes its desired state (`hub::decision`).
async fn wait_for_agent(runs: &Arc<Runs>, active: &Arc<ActiveRun>, by: DesiredBy) -> RelayResult {
    let mut deadline = Instant::now() + runs.limits.wake_timeout;
    let mut status_rx = runs.agent.subscribe();
    let mut stopping_rx = runs.hub_stopping.clone();
    let mut woke = false;
    loop {
        let status = status_rx.borrow_and_update().clone();
        // While the hub's stop is being committed the agent is about to
        // stop: wait for it, then wake it (a newer decision).
        let hub_stopping = *stopping_rx.borrow_and_update();
        if status.state == AgentState::NotInstalled {
            // Woken (or queued) into a `--dev` daemon without an agent.
            return Err((
                "agent_not_installed".into(),
                super::not_installed_message(&status),
            ));
        }
        if !hub_stopping && status.state == AgentState::Running {
            // Counted first, then the gate looked at again: a gateway
            // restart raises the gate, then counts (`env_apply`), so either
            // it waits for this run or this run waits for it.
            active
                .at_gateway
                .store(true, std::sync::atomic::Ordering::SeqCst);
            if !*runs.hub_stopping.borrow() {
                return Ok(());
            }
            active
                .at_gateway
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        if !hub_stopping && status.desired == Desired::Stopped && !woke {
            if *runs.suspended.borrow() {
                return Err(("suspended".into(), "the tenant is suspended".into()));
            }
            woke = true;
            tracing::info!("waking the agent for a run");
            if runs.agent.send(AgentCommand::Start, by).await.is_err() {
                return Err((
                    "agent_unavailable".into(),
                    "the supervisor is not running".into(),
                ));
            }
        }
        tokio::select! {
            changed = status_rx.changed() => {
                if changed.is_err() {
                    return Err(("agent_unavailable".into(), "the supervisor is not running".into()));
                }
            }
            Ok(()) = stopping_rx.changed() => {
                // The wake bound counts from when the gate drops: a run
                // queued behind a drain or a hub stop waits for it first.
                if !*stopping_rx.borrow() {
                    deadline = Instant::now() + runs.limits.wake_timeout;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()), if !hub_stopping => {
                return Err((
                    "agent_unavailable".into(),
                    format!("the agent was not ready within {:?} (state {})", runs.limits.wake_timeout, status.state.as_str()),
                ));
            }
            _ = active.cancel_queued.cancelled() => return Err(("cancelled".into(), String::new())),
        }
    }
}

/// Gateways without the runs API: stream `/v1/chat/completions` and emit
/// the same event names, so clients see one contract.
async fn chat_fallback(
    runs: &Arc<Runs>,
    run_id: &str,
    active: &Arc<ActiveRun>,
    req: &StartRun,
    session_id: &str,
    seq: &mut Sequencer,
    outcome: &mut Outcome,
) -> RelayResult {
    active.chat_fallback.store(true, Ordering::Relaxed);
    active.gateway_run_id.send_replace(Some(run_id.to_owned()));
    let mut messages = Vec::new();
    if let Some(i) = &req.instructions {
        messages.push(json!({"role": "system", "content": i}));
    }
    if let Some(Value::Array(h)) = &req.conversation_history {
        messages.extend(h.iter().cloned());
    }
    match &req.input {
        Value::Array(items) => messages.extend(items.iter().cloned()),
        other => messages.push(json!({"role": "user", "content": other})),
    }
    let body = json!({"model": "hermes-agent", "stream": true, "messages": messages, "stream_options": {"include_usage": true}});
    update(
        &runs.store,
        run_id,
        RunUpdate {
            status: Some("running"),
            started: true,
            ..Default::default()
        },
    )
    .await;
    let stream = runs
        .gateway
        .chat_stream(session_id, &body)
        .await
        .map_err(|e| ("gateway_error".to_string(), e.to_string()))?;
    let mut stream = Box::pin(stream);
    let mut parser = SseParser::default();
    let mut frames = Vec::new();
    let mut usage_v = None;
    loop {
        let chunk = tokio::select! {
            c = stream.next() => c,
            _ = active.cancel_queued.cancelled() => return Err(("cancelled".into(), String::new())),
        };
        let Some(Ok(chunk)) = chunk else {
            return Err((
                "agent_restarted".into(),
                "the agent stopped before the answer ended".into(),
            ));
        };
        if parser.feed(&chunk, &mut frames).is_err() {
            return Err((
                "gateway_error".into(),
                "the agent sent an oversized event".into(),
            ));
        }
        for frame in frames.drain(..) {
            if frame.data.trim() == "[DONE]" {
                let usage_out = usage_v.clone().map(|u: Value| {
                    json!({
                        "input_tokens": u["prompt_tokens"],
                        "output_tokens": u["completion_tokens"],
                        "total_tokens": u["total_tokens"],
                    })
                });
                let data = json!({"event": "run.completed", "run_id": run_id, "gateway_run_id": null, "output": outcome.output, "usage": usage_out, "timestamp": now_secs()});
                observe(&runs.store, run_id, "run.completed", &data, outcome).await;
                seq.emit("run.completed", data.to_string()).await;
                return Ok(());
            }
            let v: Value = serde_json::from_str(&frame.data).unwrap_or(Value::Null);
            if frame.event.as_deref() == Some("hermes.tool.progress") {
                let data = json!({"event": "tool.progress", "run_id": run_id, "gateway_run_id": null, "progress": v, "timestamp": now_secs()});
                seq.push(Cow::Borrowed("tool.progress"), Arc::from(data.to_string()))
                    .await;
                continue;
            }
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                usage_v = Some(u.clone());
            }
            if let Some(delta) = v["choices"][0]["delta"]["content"].as_str() {
                if !delta.is_empty() {
                    push_capped(&mut outcome.output, delta, MAX_OUTPUT_BYTES);
                    let data = json!({"event": "message.delta", "run_id": run_id, "gateway_run_id": null, "delta": delta, "timestamp": now_secs()});
                    seq.push(Cow::Borrowed("message.delta"), Arc::from(data.to_string()))
                        .await;
                }
            }
        }
        seq.flush().await;
    }
}
