//! A run's end in the daemon's store: the run row, the assistant message
//! and the usage ledger, in one transaction.
//!
//! Partial output is kept one way whatever ended the run (the agent
//! crashed or restarted, the daemon crashed, the run was stopped, failed or
//! timed out): the text so far is the run's `output` and an assistant
//! message marked `partial`. Only a `completed` run's message is whole.

use rusqlite::Connection;
use serde_json::{Value, json};

use crate::store::conversations::{self, AppendMessages, NewMessage, Role};
use crate::store::runs::{self as run_store, RunUpdate, StoredEvent};
use crate::store::usage::{self, NewUsage};
use crate::store::{Store, StoreError};

/// Output kept per run (the run's `output` and its assistant message).
pub(super) const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

pub(super) fn now_secs() -> f64 {
    crate::store::now_ms() as f64 / 1000.0
}

/// What the relay learned about a run, to be recorded at its end.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) status: Option<&'static str>,
    /// The `message.delta` text so far, at most [`MAX_OUTPUT_BYTES`].
    pub(super) output: String,
    pub(super) final_output: Option<String>,
    pub(super) usage: Option<Value>,
    pub(super) error: Option<(String, String)>,
    pub(super) tools: Vec<Value>,
    /// The `approval.request` not answered yet.
    pub(super) pending_approval: Option<Value>,
    /// Approvals the agent did not get (see `Run::refused_approvals`).
    pub(super) refused: Vec<Value>,
}

/// Most refused approvals kept on one run.
const MAX_REFUSED: usize = 32;

impl Outcome {
    /// Note that the pending approval (if any) was refused for `reason`;
    /// returns the entry written.
    pub(super) fn refuse_pending(&mut self, reason: &str) -> Option<Value> {
        let request = self.pending_approval.take()?;
        let entry = json!({
            "reason": reason,
            "command": request["command"],
            "description": request["description"],
            "pattern_key": request["pattern_key"],
        });
        if self.refused.len() < MAX_REFUSED {
            self.refused.push(entry.clone());
        }
        Some(entry)
    }

    pub(super) fn refused_value(&self) -> Option<Value> {
        (!self.refused.is_empty()).then(|| Value::Array(self.refused.clone()))
    }
}

fn tokens(usage: &Option<Value>, key: &str) -> i64 {
    usage.as_ref().and_then(|u| u[key].as_i64()).unwrap_or(0)
}

/// The run's output as its assistant message; marked partial unless the
/// run completed.
struct OutputMessage<'a> {
    run_id: &'a str,
    session_id: &'a str,
    platform: String,
    content: String,
    tools: Option<Value>,
    tokens: Option<i64>,
    partial: bool,
}

fn append_output(tx: &Connection, m: OutputMessage<'_>) -> Result<(), StoreError> {
    let external_id = format!("{}:output", m.run_id);
    conversations::append_in(
        tx,
        m.session_id,
        &AppendMessages {
            platform: Some(m.platform),
            title: None,
            messages: vec![NewMessage {
                role: Role::Assistant,
                content: m.content,
                tool_calls: m.tools,
                tokens_used: m.tokens,
                created_at: None,
                external_id: Some(external_id.clone()),
            }],
        },
    )?;
    if m.partial {
        conversations::mark_partial(tx, &external_id)?;
    }
    Ok(())
}

/// Record the end: run row, assistant message, usage ledger, one transaction.
pub(super) async fn finish(
    store: &Store,
    run_id: &str,
    session_id: &str,
    platform: String,
    o: Outcome,
) -> Result<(), StoreError> {
    let status = o.status.unwrap_or("failed");
    let output = match (status, &o.final_output) {
        ("completed", Some(f)) => f.clone(),
        _ => o.output.clone(),
    };
    let tokens_in = tokens(&o.usage, "input_tokens").max(tokens(&o.usage, "prompt_tokens"));
    let tokens_out = tokens(&o.usage, "output_tokens").max(tokens(&o.usage, "completion_tokens"));
    let total = tokens(&o.usage, "total_tokens").max(tokens_in + tokens_out);
    let run_id = run_id.to_owned();
    let session_id = session_id.to_owned();
    let tool_count = o.tools.len() as i64;
    let refused = o.refused_value();
    let error = o
        .error
        .clone()
        .or_else(|| (status == "failed").then(|| ("agent_error".into(), "the run failed".into())));
    store
        .write(move |c| {
            let tx = c.transaction()?;
            run_store::update(
                &tx,
                &run_id,
                &RunUpdate {
                    status: Some(status),
                    output: (!output.is_empty()).then(|| output.clone()),
                    usage: o.usage.clone(),
                    error,
                    pending_approval: Some(None),
                    tool_calls: Some(tool_count),
                    refused_approvals: refused,
                    ..Default::default()
                },
            )?;
            if !output.is_empty() || !o.tools.is_empty() {
                append_output(
                    &tx,
                    OutputMessage {
                        run_id: &run_id,
                        session_id: &session_id,
                        platform,
                        content: output,
                        tools: (!o.tools.is_empty()).then(|| Value::Array(o.tools.clone())),
                        tokens: Some(total),
                        partial: status != "completed",
                    },
                )?;
            }
            usage::record(
                &tx,
                &NewUsage {
                    run_id: Some(run_id.clone()),
                    session_id: Some(session_id.clone()),
                    tokens_in,
                    tokens_out,
                    tool_calls: tool_count,
                },
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
}

/// Close a run left unfinished by a previous process: a `run.failed`
/// event, the run `failed` with the output its logged `message.delta`
/// events add up to, and that output as a partial assistant message.
pub(super) async fn write_terminal_failure(
    store: &Store,
    run_id: &str,
    last_seq: i64,
    code: &str,
    message: &str,
) -> Result<(), StoreError> {
    let (id, code, message) = (run_id.to_owned(), code.to_owned(), message.to_owned());
    store
        .write(move |c| {
            let tx = c.transaction()?;
            let run = run_store::get(&tx, &id)?;
            let data = json!({
                "event": "run.failed",
                "run_id": id,
                "gateway_run_id": run.gateway_run_id,
                "error": message,
                "code": code,
                "timestamp": now_secs(),
            });
            let output = run_store::logged_output(&tx, &id, MAX_OUTPUT_BYTES)?;
            run_store::update(
                &tx,
                &id,
                &RunUpdate {
                    status: Some("failed"),
                    output: (!output.is_empty()).then(|| output.clone()),
                    error: Some((code, message)),
                    pending_approval: Some(None),
                    ..Default::default()
                },
            )?;
            if !output.is_empty() {
                append_output(
                    &tx,
                    OutputMessage {
                        run_id: &id,
                        session_id: &run.session_id,
                        platform: run.platform.clone(),
                        content: output,
                        tools: None,
                        tokens: None,
                        partial: true,
                    },
                )?;
            }
            run_store::append_events_in(
                &tx,
                &id,
                &[StoredEvent {
                    seq: last_seq + 1,
                    name: "run.failed".into(),
                    data: data.to_string().into(),
                }],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
}
