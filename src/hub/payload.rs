//! The heartbeat body (`schema/heartbeat.schema.json`). Built fresh for
//! every beat from borrowed snapshots, so nothing accumulates between
//! beats however long the hub is away.

use serde::Serialize;

use super::resources::HostReport;
use super::{Access, ClockView};
use crate::agent::{AgentState, AgentStatus, Desired, DesiredBy, LastExit};
use crate::store::usage::UsageEntry;

/// Version of this body's shape; bumped on an incompatible change.
pub const BODY_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Beat<'a> {
    pub version: u32,
    pub tenant_id: &'a str,
    /// Random per daemon start: a new value tells the hub the daemon restarted.
    pub boot_id: &'a str,
    /// 1, 2, 3... per boot, one per attempt (a gap is a beat that was lost).
    pub seq: u64,
    pub sent_at: String,
    pub daemon_version: &'static str,
    pub agent_release: Option<&'a str>,
    pub agent: AgentReport<'a>,
    pub access: Access,
    pub daemon_uptime_s: u64,
    pub host: &'a HostReport,
    pub open_runs: u64,
    pub cron_jobs_due: u64,
    pub clock: ClockReport,
    pub link: LinkReport<'a>,
    pub usage: UsageReport<'a>,
    /// Agent releases on the VM (version + state), the active one and the
    /// hub's desired release last acted on.
    pub releases: &'a crate::releases::ReleasesReport,
    /// Whether the daemon drains for maintenance (`ops::drain`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<crate::ops::DrainView>,
    /// When the tenant last used the agent (`ops::activity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity: Option<crate::ops::ActivityView>,
    /// The hub-driven configuration in force (issue 14): policy version,
    /// last rollback, connections and their status. Absent before the
    /// policy service runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<crate::policy::Report>,
}

#[derive(Debug, Serialize)]
pub struct AgentReport<'a> {
    pub state: AgentState,
    pub desired: Desired,
    /// Who set `desired`: `run`/`cron`/`operator` after a local wake, so
    /// the hub sees it and can decide again.
    pub desired_by: DesiredBy,
    pub since: &'a str,
    pub uptime_s: Option<u64>,
    pub restarts: u64,
    pub last_exit: Option<&'a LastExit>,
    pub last_error: Option<&'a str>,
}

impl<'a> AgentReport<'a> {
    pub fn from_status(s: &'a AgentStatus) -> AgentReport<'a> {
        AgentReport {
            state: s.state,
            desired: s.desired,
            desired_by: s.desired_by,
            since: &s.since,
            uptime_s: s.uptime_s,
            restarts: s.restarts,
            last_exit: s.last_exit.as_ref(),
            last_error: s.last_error.as_deref(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ClockReport {
    /// Hub clock minus ours (seconds), from the last reply with `now`.
    pub skew_s: Option<f64>,
    pub threshold_s: f64,
    pub warning: bool,
}

impl ClockReport {
    pub fn new(view: ClockView, threshold_s: f64) -> ClockReport {
        ClockReport {
            skew_s: view.skew_s,
            threshold_s,
            warning: view.warning,
        }
    }
}

/// How the link has been doing, so the hub can tell a VM that was cut off
/// from one that was down.
#[derive(Debug, Serialize)]
pub struct LinkReport<'a> {
    /// Beats that failed in a row before this one.
    pub consecutive_failures: u32,
    pub last_success_at: Option<&'a str>,
    pub interval_s: f64,
}

#[derive(Debug, Serialize)]
pub struct UsageReport<'a> {
    /// Oldest unacknowledged ledger entries, in `seq` order.
    pub entries: Vec<UsageDelta<'a>>,
    /// More unacknowledged entries wait beyond this batch.
    pub more: bool,
}

#[derive(Debug, Serialize)]
pub struct UsageDelta<'a> {
    pub seq: i64,
    pub run_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub tool_calls: i64,
    pub recorded_at: String,
}

impl<'a> UsageReport<'a> {
    /// `rows` holds up to `batch + 1` entries: the extra one only says
    /// that there are more.
    pub fn new(rows: &'a [UsageEntry], batch: usize) -> UsageReport<'a> {
        let more = rows.len() > batch;
        UsageReport {
            entries: rows
                .iter()
                .take(batch)
                .map(|u| UsageDelta {
                    seq: u.seq,
                    run_id: u.run_id.as_deref(),
                    session_id: u.session_id.as_deref(),
                    tokens_in: u.tokens_in,
                    tokens_out: u.tokens_out,
                    tool_calls: u.tool_calls,
                    recorded_at: crate::store::ms_to_rfc3339(u.created_at_ms),
                })
                .collect(),
            more,
        }
    }

    /// The highest `seq` carried, which bounds what a reply may acknowledge.
    pub fn max_seq(&self) -> Option<i64> {
        self.entries.last().map(|e| e.seq)
    }
}
