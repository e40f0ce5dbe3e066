//! The hub link's Prometheus series, registered into the daemon's one
//! registry by `metrics::Metrics::new`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::agent::AgentState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `connect`, `timeout`, `status`, `malformed`, `build`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// Every state, so the gauge family shows zeros for the others.
const STATES: [AgentState; 8] = [
    AgentState::Stopped,
    AgentState::Starting,
    AgentState::Running,
    AgentState::Unhealthy,
    AgentState::Backoff,
    AgentState::Failed,
    AgentState::Stopping,
    AgentState::NotInstalled,
];

pub struct HubMetrics {
    /// Beats put on the wire (successful or not).
    pub heartbeats_sent: Counter,
    /// Beats that failed, by reason.
    pub heartbeats_failed: Family<FailureLabels, Counter>,
    /// Unix time of the last beat the hub answered well.
    pub heartbeat_last_success: Gauge<f64, AtomicU64>,
    pub heartbeat_consecutive_failures: Gauge,
    /// Size of the last beat's body.
    pub heartbeat_payload_bytes: Gauge,
    /// Usage ledger entries the hub acknowledged.
    pub usage_acknowledged: Counter,
    /// Hub clock minus ours, seconds, from the last reply carrying `now`.
    pub clock_skew_seconds: Gauge<f64, AtomicU64>,
    /// 1 while the skew exceeds `hub.clock_skew_threshold`.
    pub clock_skew_warning: Gauge,
    /// 1 for the agent's current state, 0 for the others.
    pub agent_state: Family<StateLabels, Gauge>,
    /// 1 while the hub has suspended the tenant.
    pub access_suspended: Gauge,
}

impl HubMetrics {
    pub fn register(registry: &mut Registry) -> HubMetrics {
        let m = HubMetrics {
            heartbeats_sent: Counter::default(),
            heartbeats_failed: Family::default(),
            heartbeat_last_success: Gauge::default(),
            heartbeat_consecutive_failures: Gauge::default(),
            heartbeat_payload_bytes: Gauge::default(),
            usage_acknowledged: Counter::default(),
            clock_skew_seconds: Gauge::default(),
            clock_skew_warning: Gauge::default(),
            agent_state: Family::default(),
            access_suspended: Gauge::default(),
        };
        registry.register(
            "hub_heartbeats_sent",
            "Heartbeats sent to the hub (successful or not)",
            m.heartbeats_sent.clone(),
        );
        registry.register(
            "hub_heartbeats_failed",
            "Heartbeats that failed, by reason",
            m.heartbeats_failed.clone(),
        );
        registry.register(
            "hub_heartbeat_last_success_timestamp_seconds",
            "Unix time of the last heartbeat the hub acknowledged",
            m.heartbeat_last_success.clone(),
        );
        registry.register(
            "hub_heartbeat_consecutive_failures",
            "Heartbeats failed in a row (0 when the hub answers)",
            m.heartbeat_consecutive_failures.clone(),
        );
        registry.register(
            "hub_heartbeat_payload_bytes",
            "Size of the last heartbeat body",
            m.heartbeat_payload_bytes.clone(),
        );
        registry.register(
            "hub_usage_acknowledged",
            "Usage ledger entries acknowledged by the hub",
            m.usage_acknowledged.clone(),
        );
        registry.register(
            "hub_clock_skew_seconds",
            "Hub clock minus local clock, from the last heartbeat reply",
            m.clock_skew_seconds.clone(),
        );
        registry.register(
            "hub_clock_skew_warning",
            "1 while the clock skew exceeds hub.clock_skew_threshold",
            m.clock_skew_warning.clone(),
        );
        registry.register(
            "agent_state",
            "1 for the agent's current state",
            m.agent_state.clone(),
        );
        registry.register(
            "hub_access_suspended",
            "1 while the hub has suspended this tenant",
            m.access_suspended.clone(),
        );
        m.set_agent_state(AgentState::Stopped);
        m
    }

    pub fn set_agent_state(&self, current: AgentState) {
        for s in STATES {
            self.agent_state
                .get_or_create(&StateLabels { state: s.as_str() })
                .set(i64::from(s == current));
        }
    }

    pub fn failed(&self, reason: &'static str) {
        self.heartbeats_failed
            .get_or_create(&FailureLabels { reason })
            .inc();
    }
}
