//! The HTTP server (axum on a tokio runtime of its own thread): the routes of
//! `docs/http-api.md`, their error replies, and the wait for the run loop's answers.
//!
//! Reads are answered from the task's stores on the HTTP worker when the run loop is between
//! batches ([`Serving::try_read`]), else they become [`Request`]s the run loop answers (see
//! the [module doc](super)); writes go to the [`KvWriter`] and are answered once durable. A read
//! first waits until its task has processed every write acknowledged before it arrived that it
//! could see (the read barrier: for a GET, the writes to its key), so a client reads its own
//! writes. Nothing a client sends can panic a handler.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use foldhash::fast::FixedState;
use serde_json::{Value, json};

use crate::runtime::task_name;
use crate::store::Mutation;
use crate::store::config::StoreConfig;

use super::layers::{GuardLayer, MeteredLayer};
use super::query::MAX_RANGE_LIMIT;
use super::render::{self, RenderError};
use super::write::{WriteError, WriteRecord};
use super::{KvWriter, Phase, QueryError, ReadAnswer, ReadOp, Request, Serving};

/// How long a read waits for the run loop before it is answered 503.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read waits for its task to apply the writes acknowledged before it (the read
/// barrier) before it is answered 503.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a read waiting at the barrier checks that its task still runs here.
const APPLY_STEP: Duration = Duration::from_millis(200);
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// How long a client may take to send its whole request (a slow or abandoned client gets
/// 408; others are served meanwhile).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// `range` entries per page when `limit` is not given.
pub const DEFAULT_RANGE_LIMIT: usize = 100;
/// The `Retry-After` of a 503, in seconds.
const RETRY_AFTER_SECS: &str = "1";

/// The HTTP server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("http: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server's runtime or thread could not start.
    #[error("http: cannot start the server: {0}")]
    Start(#[source] std::io::Error),
}

/// An error reply: its status, code and message (`{"error": {"code", "message"}}`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400 `bad_request`.
    #[error("{0}")]
    BadRequest(String),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method_not_allowed`.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 413 `payload_too_large`: a key or value over the store's limits, a body over the
    /// server's.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 401 `unauthorized`: `http.auth.token` is set and the request does not carry it.
    #[error("{0}")]
    Unauthorized(String),
    /// 408 `request_timeout`: the client did not send its request in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 503 `unavailable`, with `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    /// 307 `moved`, with `Location`: the key's task runs in another process of the job.
    #[error("{message}")]
    Moved {
        /// The same request at the process that runs the task.
        location: String,
        /// Which task, which process.
        message: String,
    },
    /// 500 `internal`.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Moved { .. } => (StatusCode::TEMPORARY_REDIRECT, "moved"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = Json(json!({"error": {"code": code, "message": self.to_string()}}));
        let location = match &self {
            ApiError::Moved { location, .. } => HeaderValue::from_str(location).ok(),
            _ => None,
        };
        let mut r = (status, body).into_response();
        if let Some(l) = location {
            r.headers_mut().insert(header::LOCATION, l);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        r
    }
}

impl From<RenderError> for ApiError {
    fn from(e: RenderError) -> Self {
        match e {
            RenderError::Stored { .. } => ApiError::Internal(e.to_string()),
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Unavailable { .. } => ApiError::Unavailable(e.to_string()),
            QueryError::NoStore(_) => ApiError::NotFound(e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::BadRequest(format!("malformed path: {}", e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::BadRequest(format!("malformed query string: {}", e.body_text()))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!(
                "request body larger than the server's limit of {MAX_BODY_BYTES} bytes"
            ))
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {}", e.body_text()))
        }
    }
}

/// Which process of the job this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessInfo {
    /// This process's number (0-based, `--processor-id`).
    pub id: u32,
    /// How many processes run the job (`--processors`); a process runs tasks `t mod count ==
    /// id`.
    pub count: u32,
}

/// Renders the process's metrics in the Prometheus text format.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Writes of the key-value service: to `store`, through `writer`.
#[derive(Clone)]
pub struct Writes {
    /// The store the `kv` task applies the input to.
    pub store: String,
    /// The writer appending to the input topic.
    pub writer: KvWriter,
}

/// How to run the HTTP server.
#[derive(Clone)]
pub struct HttpOptions {
    /// Where to listen (port 0: any free port; see [`HttpServer::local_addr`]).
    pub listen: SocketAddr,
    /// Which process of the job this is.
    pub process: ProcessInfo,
    /// `GET /metrics`; without it the page is empty.
    pub metrics: Option<MetricsRender>,
    /// Writes, for a key-value service (`gregor serve`); without them writes are 405.
    pub writes: Option<Writes>,
    /// `http.auth.token`: when set, every request but `GET /health` must carry
    /// `Authorization: Bearer <token>` (401 otherwise).
    pub auth_token: Option<String>,
}

/// A running HTTP server; dropping it stops it.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits for the server thread to end.
    pub fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// What every handler and layer of the server shares.
pub(super) struct App {
    serving: Serving,
    process: ProcessInfo,
    addr: String,
    metrics: Option<MetricsRender>,
    writes: Option<Writes>,
    /// The bearer token every request but `GET /health` must carry, if one is configured.
    pub(super) auth_token: Option<String>,
    /// The request metrics' handles ([`super::layers::MeteredLayer`]).
    pub(super) request_metrics: RequestMetrics,
}

/// The handles of the HTTP request metrics by status and route pattern, looked up once:
/// registering a labelled metric allocates its labels and searches the recorder's registry,
/// which cost a few microseconds on every request.
#[derive(Default)]
pub(super) struct RequestMetrics {
    by_status:
        std::sync::Mutex<HashMap<u16, HashMap<String, RouteMetrics, FixedState>, FixedState>>,
}

/// The counter and the duration histogram of one route pattern and status.
#[derive(Clone)]
struct RouteMetrics {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

impl RequestMetrics {
    /// Counts one request of `route` answered with `status` after `seconds`.
    pub(super) fn record(&self, route: &str, status: StatusCode, seconds: f64) {
        let code = status.as_u16();
        let handles = {
            let mut by_status = crate::sync::lock(&self.by_status);
            let by_route = by_status.entry(code).or_default();
            match by_route.get(route) {
                Some(h) => h.clone(),
                None => {
                    let labels = [("route", route.to_string()), ("status", code.to_string())];
                    let h = RouteMetrics {
                        requests: metrics::counter!(crate::telemetry::HTTP_REQUESTS, &labels),
                        duration: metrics::histogram!(
                            crate::telemetry::HTTP_REQUEST_DURATION,
                            &labels
                        ),
                    };
                    by_route.insert(route.to_string(), h.clone());
                    h
                }
            }
        };
        handles.requests.increment(1);
        handles.duration.record(seconds);
    }
}

type AppState = State<Arc<App>>;

/// Binds `opts.listen` and serves the job `serving` serves on a thread of its own.
pub fn start(serving: Serving, opts: HttpOptions) -> Result<HttpServer, ServeError> {
    let bind = |source| ServeError::Bind {
        addr: opts.listen,
        source,
    };
    let listener = std::net::TcpListener::bind(opts.listen).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let app = Arc::new(App {
        serving,
        process: opts.process,
        addr: addr.to_string(),
        metrics: opts.metrics,
        writes: opts.writes,
        auth_token: opts.auth_token,
        request_metrics: RequestMetrics::default(),
    });
    let router = router(app);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gregor-http")
        .enable_all()
        .build()
        .map_err(ServeError::Start)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("gregor-http".into())
        .spawn(move || {
            let served = rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
            });
            if let Err(e) = served {
                tracing::error!("http server stopped: {e}");
            }
            rt.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(ServeError::Start)?;
    Ok(HttpServer {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/v1/stores/{store}/keys/{key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/stores/{store}/keys/{key}/meta", get(key_meta))
        .route("/v1/stores/{store}/range", get(range))
        .route("/v1/stores/{store}/batch", post(batch))
        .route("/v1/job", get(job))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this route".into())
        })
        .route_layer(MeteredLayer(Arc::clone(&app)))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(GuardLayer(Arc::clone(&app)))
        .with_state(app)
}

impl App {
    fn store(&self, name: &str) -> Result<&StoreConfig, ApiError> {
        let job = self.serving.job();
        job.stores.get(name).ok_or_else(|| {
            ApiError::NotFound(format!(
                "no store `{name}` in job `{}` (stores: {})",
                job.name,
                job.stores.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The serialized key from its URL text, checked against the store's limits.
    fn key(&self, store: &str, text: &str, what: &str) -> Result<Vec<u8>, ApiError> {
        let cfg = self.store(store)?;
        let key = render::key_from_url(cfg.key_serde, text, what)?;
        cfg.limits
            .check_key(store, &key)
            .map_err(|e| limit_error(format!("{what}: {e}"), &e))?;
        Ok(key)
    }

    /// The serialized key of a URL path and the partition (task) that owns it.
    fn key_and_partition(&self, store: &str, text: &str) -> Result<(Vec<u8>, u32), ApiError> {
        let key = self.key(store, text, "key")?;
        let p = crate::partitioner::partition_for_key(&key, self.tasks_total()?);
        Ok((key, p))
    }

    fn tasks_total(&self) -> Result<u32, ApiError> {
        self.serving
            .with_status(|s| s.tasks_total)
            .filter(|&n| n > 0)
            .ok_or_else(|| ApiError::Unavailable("the job is starting".into()))
    }

    /// Redirects a request for task `p` to the process that runs it, when a coordinator
    /// placed it in another one: 307 to the same path there, marked `routed=1` so that a
    /// process that does not run the task either (a model that changed meanwhile) answers
    /// 503 instead of sending the client on (at most one hop).
    fn route(&self, p: u32, uri: &axum::http::Uri) -> Result<(), ApiError> {
        let Some(routes) = self.serving.routes() else {
            return Ok(());
        };
        if self.serving.with_status(|s| s.tasks.contains_key(&p)) {
            return Ok(());
        }
        let Some((member, Some(http))) = routes.owners.get(&p) else {
            return Ok(());
        };
        if *member == routes.me {
            return Ok(());
        }
        let name = task_name(&self.serving.job().name, p);
        let routed = uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "routed=1"));
        if routed {
            return Err(ApiError::Unavailable(format!(
                "task `{name}` does not run in this process; job model {} places it in process {member} at {http}, which sent the request here: the job is rebalancing",
                routes.version
            )));
        }
        let query = match uri.query() {
            Some(q) => format!("{q}&routed=1"),
            None => "routed=1".to_string(),
        };
        Err(ApiError::Moved {
            location: format!("http://{http}{}?{query}", uri.path()),
            message: format!(
                "task `{name}` runs in process {member} at {http} (job model {})",
                routes.version
            ),
        })
    }

    /// Why task `p` cannot answer now, if it cannot.
    fn check_running(&self, p: u32) -> Result<(), ApiError> {
        self.serving.with_status(|s| {
            if s.running(p) {
                return Ok(());
            }
            let name = task_name(&self.serving.job().name, p);
            let why = match (s.phase, s.tasks.get(&p)) {
                (Phase::Starting, _) => "the job is starting".to_string(),
                (Phase::Stopping, _) => "the job is stopping".to_string(),
                (_, None) => format!(
                    "task `{name}` does not run in this process (process {} of {})",
                    self.process.id, self.process.count
                ),
                (_, Some(t)) => format!("task `{name}` is {}", t.state.as_str()),
            };
            Err(ApiError::Unavailable(why))
        })
    }

    /// Reads `op` on `store` of task `p` once the task runs here and is past its read
    /// barrier ([`await_barrier`](Self::await_barrier)): on this thread when the task's
    /// stores are free ([`Serving::try_read`]), else through the run loop, which answers
    /// between batches (wait for either with [`reply`]).
    async fn send_read(&self, p: u32, store: &str, op: ReadOp) -> Result<PendingRead, ApiError> {
        self.check_running(p)?;
        self.await_barrier(p, store, &op).await?;
        if let Some(answer) = self.serving.try_read(p, store, &op) {
            return Ok(PendingRead::Now(answer));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let request = Request::Read {
            task: p,
            store: store.to_string(),
            op,
            reply,
        };
        if !self.serving.send(request) {
            return Err(ApiError::Unavailable(
                "too many reads are waiting for the job, or it stopped".into(),
            ));
        }
        Ok(PendingRead::Later(rx))
    }

    /// Asks the run loop for the value under `key` from this process's standby copy of task
    /// `p`; `None` when it has none that may answer (none, not caught up yet, or more than
    /// `max_lag` records behind).
    async fn standby_get(
        &self,
        p: u32,
        store: &str,
        key: &[u8],
        max_lag: u64,
    ) -> Result<Option<super::StandbyAnswer>, ApiError> {
        self.store(store)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let request = Request::StandbyGet {
            task: p,
            store: store.to_string(),
            key: key.to_vec(),
            max_lag,
            reply,
        };
        if !self.serving.send(request) {
            return Err(ApiError::Unavailable(
                "too many reads are waiting for the job, or it stopped".into(),
            ));
        }
        match tokio::time::timeout(READ_TIMEOUT, rx).await {
            Ok(Ok(Ok(answer))) => Ok(Some(answer)),
            Ok(Ok(Err(QueryError::NoStandby { task, why }))) => {
                tracing::debug!("read of task {task} not answered by a standby: {why}");
                Ok(None)
            }
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(_)) => Err(ApiError::Unavailable("the job stopped".into())),
            Err(_) => Err(ApiError::Unavailable(format!(
                "the job did not answer within {} s",
                READ_TIMEOUT.as_secs()
            ))),
        }
    }

    /// [`send_read`](Self::send_read) and wait for the answer.
    async fn read(&self, p: u32, store: &str, op: ReadOp) -> Result<ReadAnswer, ApiError> {
        reply(self.send_read(p, store, op).await?).await
    }

    fn writes(&self, store: &str) -> Result<&Writes, ApiError> {
        self.store(store)?;
        let job = self.serving.job();
        match &self.writes {
            Some(w) if w.store == store => Ok(w),
            Some(w) => Err(ApiError::MethodNotAllowed(format!(
                "store `{store}` is read-only: the key-value service of job `{}` writes store `{}`",
                job.name, w.store
            ))),
            None => Err(ApiError::MethodNotAllowed(format!(
                "store `{store}` is read-only: job `{}` is not a key-value service (writes need `gregor serve`)",
                job.name
            ))),
        }
    }

    /// Appends `records` durably. The write is answered once durable: a read that arrives
    /// after the answer waits for the write's task to apply it first (the read barrier,
    /// [`App::await_barrier`]).
    async fn write(&self, w: &Writes, records: Vec<WriteRecord>) -> Result<(), ApiError> {
        // Every task the records go to must run here (reads of its keys come here, and wait
        // for it to apply the write).
        let n = self.tasks_total()?;
        let mut tasks: Vec<u32> = Vec::with_capacity(1);
        for (k, _) in &records {
            let p = crate::partitioner::partition_for_key(k, n);
            if !tasks.contains(&p) {
                tasks.push(p);
            }
        }
        for &p in &tasks {
            self.check_running(p)
                .map_err(|e| ApiError::Unavailable(format!("{e}; nothing was written")))?;
        }
        let started = tracing::enabled!(tracing::Level::DEBUG).then(std::time::Instant::now);
        let ends = w.writer.append(records).await?;
        if let Some(started) = started {
            tracing::debug!("write durable after {:?}", started.elapsed());
        }
        // A task that moved to another process meanwhile (its coordinator rebalanced) applies
        // the write there, where this process's read barrier does not reach: say so.
        let moved: Vec<String> = self.serving.with_status(|s| {
            ends.keys()
                .filter(|tp| !s.tasks.contains_key(&tp.partition))
                .map(ToString::to_string)
                .collect()
        });
        if !moved.is_empty() {
            return Err(ApiError::Unavailable(format!(
                "the write is durable in {} but its task moved to another process before \
                 applying it; it will be applied there (repeating it is safe)",
                moved.join(", ")
            )));
        }
        Ok(())
    }

    /// The read barrier of task `p` for `op` on `store`: waits until it has processed every
    /// write the key-value service acknowledged before now that the read must see: to the
    /// key, for a read of one key of the store written; every one, for a range or another
    /// store (nothing to wait for in a job without writes, or when it is there already).
    async fn await_barrier(&self, p: u32, store: &str, op: &ReadOp) -> Result<(), ApiError> {
        let Some(w) = &self.writes else {
            return Ok(());
        };
        let tp = crate::backend::TopicPartition::new(w.writer.topic(), p);
        let end = match op {
            ReadOp::Get(key) if store == w.store => self.serving.key_barrier(&tp, key),
            _ => self.serving.read_barrier(&tp),
        };
        if self.serving.has_processed(&tp, end) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        // Waits in short steps: a task that moves to another process meanwhile answers
        // there.
        loop {
            if self.serving.processed(&tp, end, APPLY_STEP).await {
                tracing::debug!(
                    "read waited {:?} for its task to apply writes",
                    started.elapsed()
                );
                return Ok(());
            }
            let moved = self
                .serving
                .with_status(|s| !s.tasks.contains_key(&tp.partition));
            if moved || started.elapsed() >= APPLY_TIMEOUT {
                return Err(ApiError::Unavailable(format!(
                    "task `{}` {} the writes acknowledged before this read (up to offset {end} of {tp})",
                    task_name(&self.serving.job().name, p),
                    if moved {
                        "moved to another process before applying".to_string()
                    } else {
                        format!("did not apply within {} s", APPLY_TIMEOUT.as_secs())
                    }
                )));
            }
        }
    }
}

/// A read answered already, or sent to the run loop ([`App::send_read`]).
enum PendingRead {
    /// Answered on the HTTP worker.
    Now(Result<ReadAnswer, QueryError>),
    /// The run loop's answer comes through this channel.
    Later(tokio::sync::oneshot::Receiver<Result<ReadAnswer, QueryError>>),
}

/// The answer of a read [`App::send_read`] made: the run loop's, or 503 if it does not come
/// in [`READ_TIMEOUT`].
async fn reply(read: PendingRead) -> Result<ReadAnswer, ApiError> {
    let rx = match read {
        PendingRead::Now(answer) => return Ok(answer?),
        PendingRead::Later(rx) => rx,
    };
    match tokio::time::timeout(READ_TIMEOUT, rx).await {
        Ok(Ok(answer)) => Ok(answer?),
        Ok(Err(_)) => Err(ApiError::Unavailable("the job stopped".into())),
        Err(_) => Err(ApiError::Unavailable(format!(
            "the job did not answer within {} s",
            READ_TIMEOUT.as_secs()
        ))),
    }
}

fn entry_json(cfg: &StoreConfig, key: &[u8], value: &[u8]) -> Result<Value, ApiError> {
    Ok(json!({
        "key": render::to_json(cfg.key_serde, key, "key")?,
        "value": render::to_json(cfg.value_serde, value, "value")?,
    }))
}

/// The response header of a read answered by a standby copy: its lag in changelog records.
pub const STANDBY_LAG_HEADER: &str = "gregor-standby-lag";
/// The response header of a read answered by a standby copy: milliseconds since its last
/// catch-up.
pub const STANDBY_AGE_HEADER: &str = "gregor-standby-age-ms";

/// `max_lag` of a GET: a whole number of changelog records, 0 or more.
fn parse_max_lag(v: Option<&String>) -> Result<Option<u64>, ApiError> {
    v.map(|t| {
        t.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "max_lag must be a whole number of changelog records (0 or more), not {t:?}"
            ))
        })
    })
    .transpose()
}

async fn get_key(
    State(app): AppState,
    uri: axum::http::Uri,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((store, text)) = path?;
    let Query(params) = query?;
    let max_lag = parse_max_lag(params.get("max_lag"))?;
    let (key, p) = app.key_and_partition(&store, &text)?;
    // Bounded staleness: a task that does not run here may be answered by this process's
    // standby copy of it, if that is at most `max_lag` records behind; else as without.
    if let Some(max_lag) = max_lag
        && !app.serving.with_status(|s| s.running(p))
        && app.serving.has_standby(p)
        && let Some(answer) = app.standby_get(p, &store, &key, max_lag).await?
    {
        let mut r = match &answer.value {
            Some(v) => Json(entry_json(app.store(&store)?, &key, v)?).into_response(),
            None => {
                ApiError::NotFound(format!("no key {text:?} in store `{store}`")).into_response()
            }
        };
        let h = r.headers_mut();
        h.insert(STANDBY_LAG_HEADER, HeaderValue::from(answer.lag));
        h.insert(
            STANDBY_AGE_HEADER,
            HeaderValue::from(u64::try_from(answer.age.as_millis()).unwrap_or(u64::MAX)),
        );
        return Ok(r);
    }
    app.route(p, &uri)?;
    match app.read(p, &store, ReadOp::Get(key.clone())).await? {
        ReadAnswer::Value(Some(v)) => {
            Ok(Json(entry_json(app.store(&store)?, &key, &v)?).into_response())
        }
        ReadAnswer::Value(None) => Err(ApiError::NotFound(format!(
            "no key {text:?} in store `{store}`"
        ))),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

async fn key_meta(
    State(app): AppState,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((store, text)) = path?;
    let (_, p) = app.key_and_partition(&store, &text)?;
    if let Some(routes) = app.serving.routes() {
        let (member, http) = routes.owners.get(&p).cloned().unzip();
        return Ok(Json(json!({
            "store": store,
            "partition": p,
            "task": task_name(&app.serving.job().name, p),
            "process": {"id": member, "http": http.flatten()},
            "model_version": routes.version,
        }))
        .into_response());
    }
    let owner = p % app.process.count.max(1);
    let http = (owner == app.process.id).then(|| app.addr.clone());
    Ok(Json(json!({
        "store": store,
        "partition": p,
        "task": task_name(&app.serving.job().name, p),
        "process": {"id": owner, "http": http},
    }))
    .into_response())
}

async fn range(
    State(app): AppState,
    store: Result<Path<String>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(store) = store?;
    let Query(params) = query?;
    let cfg = app.store(&store)?;
    for k in params.keys() {
        if !["from", "to", "prefix", "limit", "cursor"].contains(&k.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown parameter `{k}` (range takes from, to, prefix, limit, cursor)"
            )));
        }
    }
    let param = |k: &str| params.get(k).filter(|v| !v.is_empty());
    let limit = match param("limit") {
        None => DEFAULT_RANGE_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_RANGE_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "limit {l:?} must be a number from 1 to {MAX_RANGE_LIMIT}"
                ))
            })?,
    };
    let key_param = |k: &str| -> Result<Option<Vec<u8>>, ApiError> {
        param(k)
            .map(|t| render::key_from_url(cfg.key_serde, t, k))
            .transpose()
            .map_err(ApiError::from)
    };
    let (lo, hi) = match key_param("prefix")? {
        Some(prefix) => {
            if param("from").is_some() || param("to").is_some() {
                return Err(ApiError::BadRequest(
                    "prefix cannot be combined with from or to".into(),
                ));
            }
            let hi = crate::store::prefix_successor(&prefix);
            (prefix, hi)
        }
        None => (key_param("from")?.unwrap_or_default(), key_param("to")?),
    };
    let after = param("cursor")
        .map(|c| render::decode_cursor(c))
        .transpose()?;
    let tasks: Vec<u32> = app
        .serving
        .with_status(|s| s.tasks.keys().copied().collect());
    if tasks.is_empty() {
        return Err(ApiError::Unavailable(
            "no task runs in this process yet".into(),
        ));
    }
    let mut pending = Vec::new();
    for &t in &tasks {
        let mut from = lo.clone();
        if let Some((ct, ck)) = &after {
            // Entries are ordered by (key, task): past the cursor means a greater key, or the
            // same key in a later task.
            let mut start = ck.clone();
            if t <= *ct {
                start.push(0);
            }
            from = from.max(start);
        }
        if hi.as_ref().is_some_and(|h| from >= *h) {
            continue;
        }
        let op = ReadOp::Scan {
            from,
            to: hi.clone(),
            limit: limit + 1,
        };
        pending.push((t, app.send_read(t, &store, op).await?));
    }
    let mut merged: Vec<(Vec<u8>, u32, Vec<u8>)> = Vec::new();
    for (t, answer) in pending {
        match reply(answer).await? {
            ReadAnswer::Entries(entries) => {
                merged.extend(entries.into_iter().map(|(k, v)| (k, t, v)));
            }
            other => return Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        }
    }
    merged.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let cursor = if merged.len() > limit {
        merged.truncate(limit);
        merged.last().map(|(k, t, _)| render::encode_cursor(*t, k))
    } else {
        None
    };
    let entries = merged
        .iter()
        .map(|(k, _, v)| entry_json(cfg, k, v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({"entries": entries, "cursor": cursor})).into_response())
}

async fn job(State(app): AppState) -> Response {
    let job = app.serving.job();
    let status = app.serving.status();
    let tasks: Vec<Value> = status
        .tasks
        .iter()
        .map(|(&p, t)| {
            let checkpoint = t.checkpoint.as_ref().map(|cp| {
                let inputs: BTreeMap<String, u64> = cp
                    .inputs
                    .iter()
                    .flat_map(|(topic, parts)| {
                        parts.iter().map(move |(part, o)| (format!("{topic}/{part}"), *o))
                    })
                    .collect();
                let changelogs: BTreeMap<String, u64> = cp
                    .changelogs
                    .iter()
                    .filter_map(|(store, o)| {
                        let topic = job.stores.get(store)?.changelog.as_ref()?;
                        Some((format!("{topic}/{p}"), *o))
                    })
                    .collect();
                json!({"inputs": inputs, "changelogs": changelogs})
            });
            json!({
                "task": t.name,
                "partition": p,
                "state": t.state.as_str(),
                "restore": t.restore.map(|(records, total)| json!({"records": records, "total": total})),
                "checkpoint": checkpoint,
            })
        })
        .collect();
    let stores: Vec<Value> = job
        .stores
        .iter()
        .map(|(name, s)| {
            json!({"name": name, "key_serde": s.key_serde.as_str(), "value_serde": s.value_serde.as_str()})
        })
        .collect();
    Json(json!({
        "job": job.name,
        "process": {"id": app.process.id, "processes": app.process.count},
        "tasks": tasks,
        "stores": stores,
    }))
    .into_response()
}

async fn health(State(app): AppState) -> Response {
    let status = app.serving.status();
    if status.ready() {
        return Json(json!({"status": "ready"})).into_response();
    }
    let state = match status.phase {
        Phase::Stopping => "stopping",
        Phase::Starting => "starting",
        _ => "restoring",
    };
    let running = status
        .tasks
        .values()
        .filter(|t| t.state == super::TaskState::Running)
        .count();
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": state, "tasks": {"running": running, "total": status.tasks.len()}})),
    )
        .into_response();
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    r
}

async fn metrics(State(app): AppState) -> Response {
    let text = app.metrics.as_ref().map(|m| m()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The input record of a put, checked against the store's serde and limits. For a store
/// with `ttl.ms` the value carries its deadline (the store's expiry header: now + `ttl_ms`,
/// or + the store's `ttl.ms`), so the `kv` task applies the same deadline on every replay of
/// the input; a `ttl_ms` for a store without `ttl.ms` is refused.
fn put_record(
    cfg: &StoreConfig,
    store: &str,
    key: Vec<u8>,
    value: Vec<u8>,
    ttl_ms: Option<u64>,
) -> Result<WriteRecord, ApiError> {
    let m = Mutation::put(key, value);
    cfg.limits
        .check(store, &m)
        .map_err(|e| limit_error(e.to_string(), &e))?;
    let value = match (cfg.ttl_ms, ttl_ms, m.value) {
        (None, Some(_), _) => {
            return Err(ApiError::BadRequest(format!(
                "ttl_ms: store `{store}` has no expiry times (set stores.{store}.ttl.ms)"
            )));
        }
        (Some(default), ttl, Some(v)) => Some(crate::store::ttl::encode(
            cfg.clock.now_ms().saturating_add(ttl.unwrap_or(default)),
            &v,
        )),
        (_, _, v) => v,
    };
    Ok((m.key, value))
}

/// A `ttl_ms` given as text (query) or JSON: a whole number of milliseconds, 1 to
/// [`MAX_TTL_MS`](crate::store::config::MAX_TTL_MS).
fn parse_ttl_ms(v: Option<&Value>) -> Result<Option<u64>, String> {
    let Some(v) = v else { return Ok(None) };
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    match n {
        Some(n) if (1..=crate::store::config::MAX_TTL_MS).contains(&n) => Ok(Some(n)),
        _ => Err(format!(
            "ttl_ms must be a whole number of milliseconds from 1 to {}, not {v}",
            crate::store::config::MAX_TTL_MS
        )),
    }
}

/// A store limit broken: 413 for a key or value too large, 400 otherwise (an empty key).
fn limit_error(message: String, e: &crate::store::StoreError) -> ApiError {
    use crate::store::StoreError;
    match e {
        StoreError::KeyTooLarge { .. } | StoreError::ValueTooLarge { .. } => {
            ApiError::PayloadTooLarge(message)
        }
        _ => ApiError::BadRequest(message),
    }
}

async fn put_key(
    State(app): AppState,
    uri: axum::http::Uri,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((store, text)) = path?;
    let Query(params) = query?;
    if let Some(p) = params.keys().find(|p| *p != "ttl_ms" && *p != "routed") {
        return Err(ApiError::BadRequest(format!(
            "unknown parameter `{p}` (a PUT takes ttl_ms)"
        )));
    }
    let ttl_ms = parse_ttl_ms(
        params
            .get("ttl_ms")
            .map(|s| Value::String(s.clone()))
            .as_ref(),
    )
    .map_err(ApiError::BadRequest)?;
    let w = app.writes(&store)?;
    let (key, p) = app.key_and_partition(&store, &text)?;
    // The task that applies the write must be here to confirm it: else a 307 (method and
    // body go along) to the process that runs it.
    app.route(p, &uri)?;
    let body = body?;
    let cfg = app.store(&store)?;
    let value = render::value_from_body(cfg.value_serde, &body)?;
    let record = put_record(cfg, &store, key, value, ttl_ms)?;
    app.write(w, vec![record]).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_key(
    State(app): AppState,
    uri: axum::http::Uri,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((store, text)) = path?;
    let w = app.writes(&store)?;
    let (key, p) = app.key_and_partition(&store, &text)?;
    app.route(p, &uri)?;
    app.write(w, vec![(key, None)]).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The records of a batch body, every op checked before any is returned.
fn batch_records(app: &App, store: &str, body: &[u8]) -> Result<Vec<WriteRecord>, ApiError> {
    let cfg = app.store(store)?;
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    let shape = || {
        ApiError::BadRequest(r#"a batch is {"ops": [{"op": "put", "key": K, "value": V}, {"op": "delete", "key": K}, ...]}"#.into())
    };
    let obj = v.as_object().ok_or_else(shape)?;
    if obj.keys().any(|k| k != "ops") {
        return Err(shape());
    }
    let ops = obj.get("ops").and_then(Value::as_array).ok_or_else(shape)?;
    let mut records = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let at = |m: String| ApiError::BadRequest(format!("ops[{i}]: {m}"));
        let o = op
            .as_object()
            .ok_or_else(|| at("not a JSON object".into()))?;
        let kind = o.get("op").and_then(Value::as_str);
        let allowed: &[&str] = match kind {
            Some("put") => &["op", "key", "value", "ttl_ms"],
            Some("delete") => &["op", "key"],
            _ => return Err(at(r#""op" must be "put" or "delete""#.into())),
        };
        if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(at(format!("unexpected field `{k}`")));
        }
        let key_json = o.get("key").ok_or_else(|| at("missing \"key\"".into()))?;
        let key =
            render::from_json(cfg.key_serde, key_json, "key").map_err(|e| at(e.to_string()))?;
        cfg.limits
            .check_key(store, &key)
            .map_err(|e| limit_error(format!("ops[{i}]: {e}"), &e))?;
        if kind == Some("put") {
            let value_json = o
                .get("value")
                .ok_or_else(|| at("missing \"value\"".into()))?;
            let value = render::from_json(cfg.value_serde, value_json, "value")
                .map_err(|e| at(e.to_string()))?;
            let ttl_ms = parse_ttl_ms(o.get("ttl_ms")).map_err(at)?;
            records.push(
                put_record(cfg, store, key, value, ttl_ms).map_err(|e| match e {
                    ApiError::PayloadTooLarge(m) => {
                        ApiError::PayloadTooLarge(format!("ops[{i}]: {m}"))
                    }
                    e => at(e.to_string()),
                })?,
            );
        } else {
            records.push((key, None));
        }
    }
    Ok(records)
}

async fn batch(
    State(app): AppState,
    store: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(store) = store?;
    let w = app.writes(&store)?;
    let records = batch_records(&app, &store, &body?)?;
    let n = records.len();
    if n > 0 {
        app.write(w, records).await?;
    }
    Ok(Json(json!({"applied": n})).into_response())
}
