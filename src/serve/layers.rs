//! The layers every HTTP request passes, as hand-written tower services: [`GuardLayer`] (the
//! bearer token and the request's deadline, around every route and the fallbacks) and
//! [`MeteredLayer`] (requests counted and timed by route pattern and status, around each
//! route).
//!
//! They were `axum::middleware::from_fn` functions: each request then cloned the route's boxed
//! service, boxed the middleware's future and ran its extractors, twice, ~9,000 of the ~58,000
//! user-space instructions of a `gregor serve` PUT (`cli/benches/put_instructions.sh`). Here a
//! request is handed to the inner service in `call` (axum's routes are always ready) and its
//! future is wrapped, not boxed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::http::{ApiError, App, REQUEST_TIMEOUT};

/// Checks the bearer token when one is configured (on every route but `GET /health`, which
/// load balancers probe) and gives the whole request a deadline
/// ([`REQUEST_TIMEOUT`](super::http::REQUEST_TIMEOUT)), so a slow or abandoned client gets 408
/// and holds nothing (each connection is its own task, so others are served meanwhile).
#[derive(Clone)]
pub(super) struct GuardLayer(pub(super) Arc<App>);

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            app: Arc::clone(&self.0),
        }
    }
}

/// The service of [`GuardLayer`].
#[derive(Clone)]
pub(super) struct Guard<S> {
    inner: S,
    app: Arc<App>,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if let Some(denied) = unauthorized(&self.app, &req) {
            return GuardFuture::Denied {
                response: Some(denied),
            };
        }
        GuardFuture::Running {
            inner: tokio::time::timeout(REQUEST_TIMEOUT, self.inner.call(req)),
        }
    }
}

/// The 401 of a request without the configured bearer token (`None`: it may pass).
fn unauthorized(app: &App, req: &Request) -> Option<Response> {
    let token = app.auth_token.as_ref()?;
    if req.uri().path() == "/health" {
        return None;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut r = ApiError::Unauthorized(
        "this server needs `Authorization: Bearer <token>` (http.auth.token)".into(),
    )
    .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

/// Compares two secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pin_project! {
    /// The future of [`Guard`]: the 401, or the request under its deadline.
    #[project = GuardProj]
    pub(super) enum GuardFuture<F> {
        /// Refused before it reached a route.
        Denied { response: Option<Response> },
        /// The route's future, with the deadline.
        Running { #[pin] inner: tokio::time::Timeout<F> },
    }
}

impl<F> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProj::Denied { response } => Poll::Ready(Ok(response
                .take()
                .expect("GuardFuture polled after it ended"))),
            GuardProj::Running { inner } => Poll::Ready(match ready!(inner.poll(cx)) {
                Ok(answered) => answered,
                Err(_) => Ok(ApiError::RequestTimeout(format!(
                    "the request was not completed within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ))
                .into_response()),
            }),
        }
    }
}

/// Counts every routed request and its time, by route pattern and status
/// ([`crate::telemetry::HTTP_REQUESTS`], [`crate::telemetry::HTTP_REQUEST_DURATION`]).
/// A route layer: the pattern is known once the router matched it.
#[derive(Clone)]
pub(super) struct MeteredLayer(pub(super) Arc<App>);

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            app: Arc::clone(&self.0),
        }
    }
}

/// The service of [`MeteredLayer`].
#[derive(Clone)]
pub(super) struct Metered<S> {
    inner: S,
    app: Arc<App>,
}

impl<S> Service<Request> for Metered<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = req.extensions().get::<MatchedPath>().cloned();
        MeteredFuture {
            app: Arc::clone(&self.app),
            route,
            started: Instant::now(),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The future of [`Metered`]: the route's, recorded when it ends.
    pub(super) struct MeteredFuture<F> {
        app: Arc<App>,
        route: Option<MatchedPath>,
        started: Instant,
        #[pin]
        inner: F,
    }
}

impl<F> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(r) = ready!(this.inner.poll(cx));
        this.app.request_metrics.record(
            this.route.as_ref().map_or("unmatched", |m| m.as_str()),
            r.status(),
            this.started.elapsed().as_secs_f64(),
        );
        Poll::Ready(Ok(r))
    }
}
