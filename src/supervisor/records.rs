//! What the supervisor persists: its transitions and the identity of the
//! gateway it spawned, written in order by one task off the state loop.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::store::{self, Store, agent::Transition};

/// `daemon_state` key of the live gateway's identity (JSON), `""` when none.
pub const PROCESS_KEY: &str = "gateway.process";

/// The identity of a spawned gateway, persisted so the next daemon can find
/// it if this one dies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRecord {
    pub pid: u32,
    pub start_time: u64,
    pub pgid: u32,
}

pub(super) enum Record {
    Transition(Transition),
    Process(Option<ProcessRecord>),
}

/// Persist transitions and process records in order, off the state loop.
pub(super) async fn write_records(store: Store, mut rx: mpsc::Receiver<Record>) {
    while let Some(rec) = rx.recv().await {
        let result = match rec {
            Record::Transition(t) => store.write(move |c| store::agent::insert(c, &t)).await,
            Record::Process(p) => {
                let value = p
                    .and_then(|r| serde_json::to_string(&r).ok())
                    .unwrap_or_default();
                store.set_state(PROCESS_KEY, value).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot record an agent transition");
        }
    }
}
