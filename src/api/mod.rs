//! The callback API: axum routes, middleware, request and response types.
//! Handlers parse, call one service or store function, and map the result;
//! they hold no business rule and run no SQL on the async runtime.

mod agent;
mod connections;
mod conversations;
mod cron;
mod env;
pub mod extract;
mod files;
mod front;
mod memory;
mod ops;
mod policy;
mod releases;
mod runs;
mod settings;
mod skills;
mod specialization;
mod system;
mod usage;

use std::sync::Arc;

use axum::Router;
use axum::http::Method;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use tokio::sync::Semaphore;

use crate::agent::AgentHandle;
use crate::auth::Credentials;
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::Store;

/// Prefix of every route the hub calls for this tenant.
pub const TENANT_PREFIX: &str = "/v1/tenant-runtime/{tenant_id}";

/// What handlers share. axum clones the state for every request that
/// extracts it, so it is one `Arc` (one atomic increment) rather than the
/// parts themselves (about 25 reference counts up and down per request:
/// 4 % of the daemon's CPU on `GET /version`, BENCHMARKS.md).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppParts {
    /// The supervised gateway: status, commands, endpoint.
    pub agent: AgentHandle,
    pub config: Arc<Config>,
    pub store: Store,
    pub credentials: Arc<Credentials>,
    pub runs: Arc<crate::runs::Runs>,
    pub cron: Arc<crate::cron::CronService>,
    pub metrics: Arc<Metrics>,
    pub inflight: Arc<Semaphore>,
    /// Access (suspended or not) and counters shared with the heartbeat.
    pub hub: crate::hub::HubLink,
    pub files: Arc<crate::files::FileRoots>,
    pub env_file: Arc<crate::envfile::EnvFile>,
    /// Restarts the gateway (when idle) after an `.env` change.
    pub env_apply: crate::env_apply::EnvApply,
    pub hermes_config: Arc<crate::settings::HermesConfig>,
    /// Whether the skills index stopped at its caps (`GET /skills`).
    pub skills_status: Arc<crate::skills::IndexStatus>,
    /// Agent releases: install, activate, remove (`/agent/releases`).
    pub releases: crate::releases::Releases,
    /// Drain, activity (`api::ops`).
    pub ops: Arc<crate::ops::Ops>,
    /// The hub's agent policy and MCP connections.
    pub agent_config: Arc<crate::policy::AgentConfig>,
}

/// One route: method, path (relative to its prefix) and handler.
struct Route {
    method: Method,
    path: &'static str,
    handler: MethodRouter<AppState>,
}

fn r(method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Route {
    Route {
        method,
        path,
        handler,
    }
}

/// Routes that need no credential.
fn public_routes(with_metrics: bool) -> Vec<Route> {
    let mut v = vec![
        r(Method::GET, "/v1/healthz", get(system::healthz)),
        r(Method::GET, "/v1/readyz", get(system::readyz)),
    ];
    if with_metrics {
        v.push(r(Method::GET, "/metrics", get(system::metrics)));
    }
    v
}

/// Routes under [`TENANT_PREFIX`]: all behind the credential check.
fn tenant_routes() -> Vec<Route> {
    vec![
        r(Method::GET, "/version", get(system::version)),
        r(Method::GET, "/agent", get(agent::status)),
        r(Method::POST, "/agent/start", post(agent::start)),
        r(Method::POST, "/agent/stop", post(agent::stop)),
        r(Method::POST, "/agent/restart", post(agent::restart)),
        r(Method::POST, "/drain", post(ops::drain)),
        r(Method::DELETE, "/drain", delete(ops::cancel_drain)),
        r(Method::GET, "/logs", get(ops::logs)),
        r(Method::GET, "/diagnostics", get(ops::diagnostics)),
        r(
            Method::GET,
            "/conversations",
            get(conversations::list_sessions),
        ),
        r(
            Method::GET,
            "/conversations/search",
            get(conversations::search),
        ),
        r(
            Method::GET,
            "/conversations/{session_id}/messages",
            get(conversations::list_messages),
        ),
        r(
            Method::POST,
            "/conversations/{session_id}/messages",
            post(conversations::append_messages),
        ),
        r(Method::POST, "/runs", post(runs::start)),
        r(Method::GET, "/runs", get(runs::list)),
        r(Method::GET, "/runs/{run_id}", get(runs::get)),
        r(Method::GET, "/runs/{run_id}/events", get(runs::events)),
        r(Method::POST, "/runs/{run_id}/stop", post(runs::stop)),
        r(
            Method::POST,
            "/runs/{run_id}/approval",
            post(runs::approval),
        ),
        r(Method::GET, "/agent-cron", get(cron::list)),
        r(Method::POST, "/agent-cron", post(cron::create)),
        r(Method::GET, "/agent-cron/{job_id}", get(cron::get)),
        r(Method::PATCH, "/agent-cron/{job_id}", patch(cron::update)),
        r(Method::DELETE, "/agent-cron/{job_id}", delete(cron::remove)),
        r(
            Method::POST,
            "/agent-cron/{job_id}/pause",
            post(cron::pause),
        ),
        r(
            Method::POST,
            "/agent-cron/{job_id}/resume",
            post(cron::resume),
        ),
        r(
            Method::POST,
            "/agent-cron/{job_id}/run",
            post(cron::run_now),
        ),
        r(Method::GET, "/agent-cron/{job_id}/runs", get(cron::history)),
        r(Method::POST, "/memory", post(memory::create)),
        r(Method::GET, "/memory", get(memory::list)),
        r(Method::GET, "/memory/search", get(memory::search)),
        r(Method::GET, "/memory/stats", get(memory::stats)),
        r(Method::DELETE, "/memory/{id}", delete(memory::remove)),
        r(Method::GET, "/usage", get(usage::usage)),
        r(Method::GET, "/skills", get(skills::list)),
        r(
            Method::GET,
            "/skills/{category}/{skill}/files",
            get(skills::files),
        ),
        r(Method::GET, "/skill-files/{*skill_path}", get(skills::file)),
        r(
            Method::PUT,
            "/skills/{skill_name}/state",
            put(skills::set_state),
        ),
        r(Method::GET, "/agent-card", get(skills::agent_card)),
        r(Method::GET, "/files", get(files::list)),
        r(Method::GET, "/files/content", get(files::content)),
        r(Method::GET, "/files/download", get(files::download)),
        r(Method::GET, "/env", get(env::list)),
        r(Method::PUT, "/env/{name}", put(env::put)),
        r(Method::DELETE, "/env/{name}", delete(env::remove)),
        r(Method::GET, "/settings", get(settings::get)),
        r(Method::PATCH, "/settings", patch(settings::patch)),
        r(Method::GET, "/agent/releases", get(releases::list)),
        r(Method::POST, "/agent/releases", post(releases::install)),
        r(
            Method::POST,
            "/agent/releases/{version}/activate",
            post(releases::activate),
        ),
        r(
            Method::DELETE,
            "/agent/releases/{version}",
            delete(releases::remove),
        ),
        r(Method::GET, "/agent-policy", get(policy::get)),
        r(Method::PUT, "/agent-policy", put(policy::put)),
        r(
            Method::GET,
            "/agent-specialization",
            get(specialization::get),
        ),
        r(
            Method::PUT,
            "/agent-specialization",
            put(specialization::put),
        ),
        r(
            Method::DELETE,
            "/agent-specialization",
            delete(specialization::remove),
        ),
        r(Method::GET, "/connections", get(connections::list)),
        r(Method::PUT, "/connections/{name}", put(connections::put)),
        r(
            Method::DELETE,
            "/connections/{name}",
            delete(connections::remove),
        ),
    ]
}

/// Every (method, full path) the router serves, for the contract test.
pub fn route_list() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = public_routes(true)
        .into_iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .chain(
            tenant_routes()
                .into_iter()
                .map(|r| (r.method.to_string(), format!("{TENANT_PREFIX}{}", r.path))),
        )
        .collect();
    v.sort();
    v
}

/// The main router. `/metrics` is left out when it has its own listener.
pub fn router(state: AppState) -> Router {
    let with_metrics = state.config.listen.metrics_addr.is_none();
    let mut served = Vec::new();
    let mut tenant = Router::new();
    for route in tenant_routes() {
        let path = format!("{TENANT_PREFIX}{}", route.path);
        tenant = tenant.route(&path, route.handler);
        served.push((route.method, path));
    }
    let mut public = Router::new();
    for route in public_routes(with_metrics) {
        public = public.route(route.path, route.handler);
        served.push((route.method, route.path.to_owned()));
    }
    finish(public.merge(tenant), state, &served)
}

/// A router with `/metrics` only, for `listen.metrics_addr`.
pub fn metrics_router(state: AppState) -> Router {
    finish(
        Router::new().route("/metrics", get(system::metrics)),
        state,
        &[(Method::GET, "/metrics".to_owned())],
    )
}

/// Fallbacks, then the one middleware ([`front`]: shedding, credential,
/// body limit, timeout, metrics) around every route and fallback, and the
/// panic catcher outside it all.
fn finish(router: Router<AppState>, state: AppState, served: &[(Method, String)]) -> Router {
    let limit = state.config.limits.body_bytes;
    router
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(front::FrontLayer::new(state.clone(), served))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("handler panicked");
                ApiError::Internal("handler panicked".into()).into_response()
            },
        ))
        .with_state(state)
}

/// Clamp a client's page size to the configured maximum (default 50).
pub(crate) fn page_size(state: &AppState, requested: Option<u32>) -> Result<u32, ApiError> {
    let max = state.config.limits.page_size_max;
    match requested {
        None => Ok(50.min(max)),
        Some(0) => Err(ApiError::InvalidArgument(
            "`limit` must be at least 1".into(),
        )),
        Some(n) if n > max => Err(ApiError::InvalidArgument(format!(
            "`limit` must be at most {max}"
        ))),
        Some(n) => Ok(n),
    }
}
