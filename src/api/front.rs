//! The one middleware in front of every handler: load shedding, the
//! credential and tenant check, the body limit, the request timeout and the
//! request metrics, in a single tower service.
//!
//! Why one: each `axum::middleware::from_fn` layer boxes a future and a
//! clone of the inner service per request; five of them cost the daemon
//! more than the handlers of its cheap routes (BENCHMARKS.md, "HTTP at the
//! limit"). Here a request costs one boxed future, no label `String`s (the
//! route labels are built once, with the router) and no timer on the
//! routes that cannot wait on anything.
//!
//! Applied with `Router::layer`, so it runs after routing: the matched
//! route template is known, and a route's own method-not-allowed answer
//! passes through it too (recorded, never authenticated, as before).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::histogram::Histogram;
use tower::{Layer, Service};

use super::{AppState, TENANT_PREFIX, extract};
use crate::error::ApiError;
use crate::metrics::{RequestLabels, RouteLabels, RouteName};

/// Liveness, readiness and metrics: cheap, and what tells an operator (or
/// systemd, or the hub) that the daemon is alive while it sheds load.
const NEVER_SHED: &[&str] = &["/v1/healthz", "/v1/readyz", "/metrics"];

/// Routes that answer from memory without awaiting anything (no store, no
/// gateway, no file): they cannot outlive the request timeout, so they get
/// no timer. Full paths.
const BOUNDED: &[(Method, &str)] = &[
    (Method::GET, "/v1/healthz"),
    (Method::GET, "/v1/tenant-runtime/{tenant_id}/version"),
    (Method::GET, "/v1/tenant-runtime/{tenant_id}/agent"),
];

/// Method labels: the standard methods by name, anything else as `other`
/// (a client inventing methods cannot create series).
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "other",
];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// One route template as the middleware sees it.
struct RouteInfo {
    /// The label value (the template, never the raw path).
    route: Arc<str>,
    /// Methods with a handler (others get the route's 405, unauthenticated).
    methods: Vec<Method>,
    /// Under [`TENANT_PREFIX`]: credential and tenant checked.
    tenant: bool,
    /// Methods of this route that need no timer.
    bounded: Vec<Method>,
    /// The latency histogram per method label, taken from the family on
    /// first use and kept (series appear when first used, as before).
    seconds: [OnceLock<Histogram>; METHODS.len()],
}

impl RouteInfo {
    fn new(route: &str, methods: Vec<Method>, tenant: bool) -> RouteInfo {
        let bounded = BOUNDED
            .iter()
            .filter(|(_, p)| *p == route)
            .map(|(m, _)| m.clone())
            .collect();
        RouteInfo {
            route: Arc::from(route),
            methods,
            tenant,
            bounded,
            seconds: Default::default(),
        }
    }

    /// A handler serves this method (axum's `get` serves `HEAD` too).
    fn serves(&self, m: &Method) -> bool {
        self.methods
            .iter()
            .any(|have| have == m || (*have == Method::GET && *m == Method::HEAD))
    }
}

struct Shared {
    state: AppState,
    routes: HashMap<Arc<str>, RouteInfo>,
    /// Requests no route matched (label `unmatched`).
    unmatched: RouteInfo,
    body_limit: usize,
}

impl Shared {
    fn route(&self, req: &Request) -> &RouteInfo {
        req.extensions()
            .get::<MatchedPath>()
            .and_then(|m| self.routes.get(m.as_str()))
            .unwrap_or(&self.unmatched)
    }

    fn record(&self, info: &RouteInfo, method: usize, status: u16, started: Instant) {
        let metrics = &self.state.metrics;
        info.seconds[method]
            .get_or_init(|| {
                metrics
                    .request_seconds
                    .get_or_create(&RouteLabels {
                        method: METHODS[method],
                        route: RouteName(info.route.clone()),
                    })
                    .clone()
            })
            .observe(started.elapsed().as_secs_f64());
        metrics
            .requests
            .get_or_create(&RequestLabels {
                method: METHODS[method],
                route: RouteName(info.route.clone()),
                status,
            })
            .inc();
    }

    /// The credential, then the tenant: a request for another tenant is
    /// `404`, and only after authentication, so it reveals nothing.
    fn refuse(&self, req: &Request) -> Option<Response> {
        let ok = bearer(req.headers()).is_some_and(|t| self.state.credentials.verify(t));
        if !ok {
            self.state.metrics.auth_failures.inc();
            tracing::debug!(
                path = req.uri().path(),
                "refused: missing or wrong credential"
            );
            return Some(ApiError::Unauthenticated.into_response());
        }
        let tenant = req
            .uri()
            .path()
            .strip_prefix("/v1/tenant-runtime/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        if tenant != self.state.config.tenant_id {
            return Some(ApiError::NotFound("no such tenant on this host".into()).into_response());
        }
        // An authenticated call for this tenant: the hub's activity signal.
        self.state.ops.activity.hub_called();
        None
    }
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

/// The layer; `routes` are `(method, full path template)` of every handler.
#[derive(Clone)]
pub struct FrontLayer {
    shared: Arc<Shared>,
}

impl FrontLayer {
    pub fn new(state: AppState, routes: &[(Method, String)]) -> FrontLayer {
        let mut by_path: HashMap<Arc<str>, RouteInfo> = HashMap::new();
        for (method, path) in routes {
            match by_path.get_mut(path.as_str()) {
                Some(info) => info.methods.push(method.clone()),
                None => {
                    let info =
                        RouteInfo::new(path, vec![method.clone()], path.starts_with(TENANT_PREFIX));
                    by_path.insert(info.route.clone(), info);
                }
            }
        }
        let body_limit = state.config.limits.body_bytes;
        FrontLayer {
            shared: Arc::new(Shared {
                state,
                routes: by_path,
                unmatched: RouteInfo::new("unmatched", Vec::new(), false),
                body_limit,
            }),
        }
    }
}

impl<S> Layer<S> for FrontLayer {
    type Service = Front<S>;

    fn layer(&self, inner: S) -> Front<S> {
        Front {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Front<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for Front<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // The service that was polled ready serves this request; the clone
        // stays for the next one (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let started = Instant::now();
            let info = shared.route(&req);
            let method = method_index(req.method());
            let served = info.serves(req.method());
            let state = &shared.state;
            // Shed, not queue.
            let permit = if NEVER_SHED.contains(&req.uri().path()) {
                None
            } else {
                match state.inflight.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        let resp = ApiError::TooManyRequests {
                            message: "too many requests in flight; retry shortly".into(),
                            retry_after_s: 1,
                        }
                        .into_response();
                        shared.record(info, method, resp.status().as_u16(), started);
                        return Ok(resp);
                    }
                }
            };
            let refused = if info.tenant && served {
                shared.refuse(&req)
            } else {
                None
            };
            let resp = match refused {
                Some(resp) => resp,
                None => {
                    req.extensions_mut()
                        .insert(extract::BodyLimit(shared.body_limit));
                    let bounded = !served || info.bounded.contains(req.method());
                    if bounded {
                        match inner.call(req).await {
                            Ok(resp) => resp,
                            Err(never) => match never {},
                        }
                    } else {
                        // Covers producing the response head; a stream
                        // then runs on its own.
                        let limit = state.config.limits.request_timeout;
                        match tokio::time::timeout(limit, inner.call(req)).await {
                            Ok(Ok(resp)) => resp,
                            Ok(Err(never)) => match never {},
                            Err(_) => ApiError::Timeout(limit).into_response(),
                        }
                    }
                }
            };
            drop(permit);
            shared.record(info, method, resp.status().as_u16(), started);
            Ok(resp)
        })
    }
}
