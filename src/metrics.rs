//! Prometheus metrics. One registry; every component's series are fields
//! here so the exposition is one place.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A route template as a label value: shared, so a request's labels are a
/// reference count away, not a copy.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteName(pub Arc<str>);

impl EncodeLabelValue for RouteName {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// Labels of a request. Built per request without allocating: the method
/// is one of a fixed set of names and the route template is shared, made
/// once with the router (`api::front`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: RouteName,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: RouteName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    started: Instant,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RouteLabels, Histogram>,
    pub auth_failures: Counter,
    pub uptime_seconds: Gauge<f64, AtomicU64>,
    pub db_bytes: Gauge,
    pub hub: crate::hub::HubMetrics,
    /// Cron firings by outcome: started, skipped, missed, start_failed.
    pub cron_firings: Family<OutcomeLabels, Counter>,
    /// Scheduled firing's start minus its planned time.
    pub cron_fire_lag_seconds: Histogram,
    /// Delivery attempts to the hub by outcome: acked, failed.
    pub cron_deliveries: Family<OutcomeLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hermes_tenantd");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route template and status",
            requests.clone(),
        );
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ])
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to produce the response head, by route template",
            request_seconds.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Requests refused for a missing or wrong credential",
            auth_failures.clone(),
        );
        let uptime_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "uptime_seconds",
            "Seconds since the daemon started",
            uptime_seconds.clone(),
        );
        let db_bytes = Gauge::default();
        registry.register(
            "db_bytes",
            "Size of the SQLite database with its WAL",
            db_bytes.clone(),
        );
        let hub = crate::hub::HubMetrics::register(&mut registry);
        let cron_firings = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "cron_firings",
            "Cron firings by outcome (started, skipped, missed, start_failed)",
            cron_firings.clone(),
        );
        let cron_fire_lag_seconds =
            Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]);
        registry.register(
            "cron_fire_lag_seconds",
            "Delay between a scheduled firing's planned time and its start",
            cron_fire_lag_seconds.clone(),
        );
        let cron_deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "cron_deliveries",
            "Delivery attempts to the hub by outcome (acked, failed)",
            cron_deliveries.clone(),
        );
        Metrics {
            registry,
            cron_firings,
            cron_fire_lag_seconds,
            cron_deliveries,
            started: Instant::now(),
            requests,
            request_seconds,
            auth_failures,
            uptime_seconds,
            db_bytes,
            hub,
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The text exposition, with point-in-time gauges refreshed.
    pub fn render(&self, db_bytes: u64) -> String {
        self.uptime_seconds
            .set(self.started.elapsed().as_secs_f64());
        self.db_bytes.set(db_bytes as i64);
        let mut out = String::with_capacity(8 * 1024);
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
