//! The HTTP server: `/metrics` and `/healthz` on `--metrics-listen`, and the read-only
//! JSON API the CLI talks to, versioned under `/api/v1/`, on the unix socket (and the
//! cluster listener): `listeners.rs` says which listener serves what to whom, `access.rs`
//! what each caller may see (docs/security.md). One file per resource.
//!
//! It runs on its own thread with a single-threaded tokio runtime, apart from the scan:
//! a slow client or a blocked `/proc` read here never delays detection, and a stuck scan
//! never stops `/metrics` from answering. Every error is a 4xx/5xx with a JSON body
//! `{"error": "..."}`.
pub mod access;
mod cluster;
mod hangs;
mod health;
mod history;
pub mod listeners;
mod metrics;
pub mod options;
pub mod peer;
mod status;
pub mod threads;
mod watch;

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{FromRequestParts, MatchedPath, Query, Request, State, rejection::QueryRejection},
    http::{StatusCode, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};

pub use self::{cluster::TOKEN_HEADER, threads::StackRequest};
use crate::{metrics::Metrics, probe::StateReader, sink::Store};

/// What the handlers share.
pub struct Api {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// Set once the probes are attached: then `/healthz` is ready.
    probes: OnceLock<ProbeAccess>,
    /// When the detection loop last completed a scan (ms since `born`); `/healthz` fails
    /// when it is older than `STALE_SCANS` scan intervals.
    last_scan_ms: AtomicU64,
    born: Instant,
    scan_interval: Duration,
    /// `watch` streams open now (at most `watch::MAX_STREAMS`).
    watch_streams: std::sync::atomic::AtomicUsize,
    /// `threads` requests being read (at most `threads::THREAD_DUMPS`).
    thread_dumps: Arc<tokio::sync::Semaphore>,
}

/// `/healthz` fails when no scan completed for this many scan intervals (at least
/// `STALE_AT_LEAST`): the detection loop is stuck or dead, and the daemon is blind.
pub const STALE_SCANS: u32 = 5;
const STALE_AT_LEAST: Duration = Duration::from_secs(1);

/// The handlers' way to the kernel side, once it is there.
struct ProbeAccess {
    /// Reads one thread's state by pidfd; `None` where thread pidfds are missing (< 6.9).
    reader: Option<StateReader>,
    /// Stack captures go to the scan thread, which owns the iterators (bounded: 503 when
    /// full).
    stacks: mpsc::SyncSender<StackRequest>,
}

impl Api {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, scan_interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            store,
            metrics,
            probes: OnceLock::new(),
            last_scan_ms: AtomicU64::new(0),
            born: Instant::now(),
            scan_interval,
            watch_streams: std::sync::atomic::AtomicUsize::new(0),
            thread_dumps: Arc::new(tokio::sync::Semaphore::new(threads::THREAD_DUMPS)),
        })
    }

    /// The detection loop completed a scan now.
    pub fn scan_completed(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_scan_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the last scan completed, if it is too long: the daemon is blind.
    fn scan_overdue(&self) -> Option<Duration> {
        let last = Duration::from_millis(self.last_scan_ms.load(Ordering::Relaxed));
        let ago = self.born.elapsed().saturating_sub(last);
        let limit = (self.scan_interval * STALE_SCANS).max(STALE_AT_LEAST);
        (ago > limit).then_some(ago)
    }

    /// The probes are attached: from now on `/healthz` answers 200 and `threads` reads
    /// the per-thread state.
    pub fn probes_attached(
        &self,
        reader: Option<StateReader>,
        stacks: mpsc::SyncSender<StackRequest>,
    ) {
        self.scan_completed();
        let _ = self.probes.set(ProbeAccess { reader, stacks });
    }

    fn ready(&self) -> bool {
        self.probes.get().is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Socket(#[from] listeners::SocketError),
    #[error(
        "--cluster-api-listen needs --cluster-api-token-file: the cluster API never answers without a token"
    )]
    NoClusterToken,
    #[error("cannot start the HTTP server: {0}")]
    Start(#[source] std::io::Error),
}

/// What to listen on.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    /// `/metrics` and `/healthz`.
    pub metrics: Option<SocketAddr>,
    /// The per-process API for local callers, and the group that may connect.
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
    /// The per-process API for token holders.
    pub cluster: Option<options::ClusterListener>,
    pub limits: listeners::Limits,
}

/// Where the server listens, once bound.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub metrics: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub cluster: Option<SocketAddr>,
}

fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let bind = |source| ServeError::Bind { addr, source };
    let listener = TcpListener::bind(addr).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    Ok(listener)
}

/// Binds every listener now (so that a taken port or a bad socket path fails the start)
/// and serves them on a thread of its own. Returns what was bound (the port, when an
/// address asked for port 0).
pub fn serve(listen: Listeners, api: Arc<Api>) -> Result<Bound, ServeError> {
    let metrics = listen.metrics.map(bind_tcp).transpose()?;
    let cluster = match &listen.cluster {
        None => None,
        Some(cluster) => {
            let token_file = cluster
                .token_file
                .clone()
                .ok_or(ServeError::NoClusterToken)?;
            Some((bind_tcp(cluster.addr)?, token_file))
        }
    };
    let socket = listen
        .socket
        .as_deref()
        .map(|path| listeners::bind_socket(path, listen.socket_group.as_deref()))
        .transpose()?;
    let local = |l: &TcpListener| l.local_addr().ok();
    let bound = Bound {
        metrics: metrics.as_ref().and_then(local),
        socket: listen.socket.clone(),
        cluster: cluster.as_ref().and_then(|(l, _)| local(l)),
    };
    if let Some(socket) = &socket {
        socket.set_nonblocking(true).map_err(ServeError::Start)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .thread_name("hangwatch-http-io")
        .max_blocking_threads(4)
        .build()
        .map_err(ServeError::Start)?;
    let limits = listen.limits;
    thread::Builder::new()
        .name("hangwatch-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let counted = Arc::clone(&api.metrics);
                let mut serving = tokio::task::JoinSet::new();
                if let Some(listener) = metrics.and_then(tcp) {
                    let router = metrics_router(Arc::clone(&api));
                    serving.spawn(listeners::serve(
                        listener,
                        router,
                        limits,
                        Arc::clone(&counted),
                    ));
                }
                if let Some(listener) = socket.and_then(|l| {
                    tokio::net::UnixListener::from_std(l)
                        .inspect_err(|err| tracing::error!("HTTP server: {err}"))
                        .ok()
                }) {
                    let router = router(Arc::clone(&api));
                    serving.spawn(listeners::serve(
                        listener,
                        router,
                        limits,
                        Arc::clone(&counted),
                    ));
                }
                if let Some((listener, token_file)) = cluster
                    && let Some(listener) = tcp(listener)
                {
                    let router = router(Arc::clone(&api)).layer(middleware::from_fn_with_state(
                        token_file,
                        cluster::require_token,
                    ));
                    serving.spawn(listeners::serve(listener, router, limits, counted));
                }
                // The accept loops run until the process exits.
                while serving.join_next().await.is_some() {}
            });
        })
        .map_err(ServeError::Start)?;
    Ok(bound)
}

fn tcp(listener: TcpListener) -> Option<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(listener)
        .inspect_err(|err| tracing::error!("HTTP server: {err}"))
        .ok()
}

/// What the metrics listener serves: aggregates only.
pub fn metrics_router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(health::healthz))
        .fallback(not_here)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&api), count))
        .with_state(api)
}

/// The whole API, for the unix socket and the cluster listener: each per-process route
/// answers for the `Caller` its listener put in the request.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(health::healthz))
        .route("/api/v1/hangs", get(hangs::list))
        .route("/api/v1/hangs/{id}", get(hangs::one))
        .route("/api/v1/history", get(history::list))
        .route("/api/v1/threads/{pid}", get(threads::threads))
        .route("/api/v1/status", get(status::status))
        .route("/api/v1/watch", get(watch::watch))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&api), count))
        .with_state(api)
}

/// The caller a per-process route answers for; a request without one (the metrics
/// listener, or a socket whose peer could not be read) is refused with 401.
impl<S: Send + Sync> FromRequestParts<S> for access::Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized(NOT_HERE))
    }
}

const NOT_HERE: &str = "the per-process API is not served here: it is on the daemon's unix socket (run the hangwatch CLI on the node; `hangwatch run --api-socket`), or on the cluster listener with a token (docs/security.md)";

/// The metrics listener's answer to anything but `/metrics` and `/healthz`: 401 for the
/// API (it exists, not for callers of this port), 404 for the rest.
async fn not_here(request: Request) -> ApiError {
    if request.uri().path().starts_with("/api/") {
        ApiError::unauthorized(NOT_HERE)
    } else {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no such endpoint here: this port serves /metrics and /healthz",
        )
    }
}

/// Counts each request by route (a short name: bounded, and free of the `{}` of path
/// templates that some scrapers mis-parse) and status code.
async fn count(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let route = match request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/metrics") => "metrics",
        Some("/healthz") => "healthz",
        Some("/api/v1/hangs") => "hangs",
        Some("/api/v1/hangs/{id}") => "hang",
        Some("/api/v1/history") => "history",
        Some("/api/v1/threads/{pid}") => "threads",
        Some("/api/v1/status") => "status",
        Some("/api/v1/watch") => "watch",
        _ => "other",
    };
    let response = next.run(request).await;
    api.metrics.http_request(route, response.status().as_u16());
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /api/v1/hangs, /api/v1/hangs/ID, /api/v1/history, /api/v1/threads/PID, /api/v1/status, /api/v1/watch, /metrics, /healthz",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "the API is read-only: use GET",
    )
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: the caller may not see this process (`access::Denied` says why).
    pub fn forbidden(denied: &access::Denied) -> Self {
        Self::new(StatusCode::FORBIDDEN, denied.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// The query string as name/value pairs, checked against the names a route takes.
pub struct Params(Vec<(String, String)>);

type RawParams = Result<Query<Vec<(String, String)>>, QueryRejection>;

impl Params {
    /// Refuses a malformed query and names it does not know (a typo is an error, not a
    /// silently ignored filter).
    pub fn check(raw: RawParams, known: &[&str]) -> Result<Self, ApiError> {
        let Query(pairs) = raw.map_err(|e| ApiError::bad_request(e.body_text()))?;
        for (name, _) in &pairs {
            if !known.contains(&name.as_str()) {
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{name}` (this endpoint takes: {known})"
                )));
            }
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// An integer in `range`, or `default` when absent.
    pub fn number(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
        default: u64,
    ) -> Result<u64, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        text.parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`{name}` must be an integer from {} to {}, not `{text}`",
                    range.start(),
                    range.end()
                ))
            })
    }

    /// `true`/`false` (or `1`/`0`); a bare `?name` is true.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!(
                "`{name}` must be true or false, not `{other}`"
            ))),
        }
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

#[cfg(test)]
mod tests;
