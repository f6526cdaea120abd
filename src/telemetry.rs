//! Logging setup and the per-request context: request id, access log, metrics.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT_REQUEST_ID: Arc<str>;
}

/// The id of the request being served by this task, if any.
/// `fut` with this request's id and tracing span, for work the request
/// hands to a task of its own.
pub fn in_this_request<F: std::future::Future>(
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    let span = tracing::Span::current();
    let id = CURRENT_REQUEST_ID.try_with(Arc::clone).ok();
    async move {
        let fut = tracing::Instrument::instrument(fut, span);
        match id {
            Some(id) => CURRENT_REQUEST_ID.scope(id, fut).await,
            None => fut.await,
        }
    }
}

pub fn current_request_id() -> Option<String> {
    CURRENT_REQUEST_ID.try_with(|id| id.to_string()).ok()
}

/// Per-request facts that inner layers learn and outer layers report
/// (the access log and the audit log need to know who the caller was).
#[derive(Debug, Default)]
pub struct RequestCtx {
    pub user: OnceLock<String>,
    /// How the caller authenticated (`bearer`, `pat`, `ticket`,
    /// `query_token`, `password`, `refresh_token`), for the audit log.
    pub auth: OnceLock<&'static str>,
    /// The personal access token the request came with, for the audit log.
    pub token_id: OnceLock<String>,
}

impl RequestCtx {
    pub fn set_user(&self, username: &str) {
        let _ = self.user.set(username.to_owned());
        tracing::Span::current().record("user", username);
    }

    pub fn set_auth(&self, method: &'static str) {
        let _ = self.auth.set(method);
    }

    pub fn set_token_id(&self, id: &str) {
        let _ = self.token_id.set(id.to_owned());
    }
}

/// Installs the global tracing subscriber. Safe to call more than once.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// The process-wide Prometheus recorder (one per process even when tests start
/// several apps).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                )
                .expect("static bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (only in odd test set-ups);
            // then this handle simply renders nothing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Accepts a client-supplied request id only if it is short and printable, so
/// it cannot inject anything into logs.
fn usable_request_id(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then_some(s)
}

/// Outermost middleware: request id, tracing span, access log line, HTTP metrics.
pub async fn request_context(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id: Arc<str> = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(usable_request_id)
        .map(Arc::from)
        .unwrap_or_else(|| Arc::from(uuid::Uuid::new_v4().to_string()));
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    // The query string is never logged: it may carry `?token=`.
    let path = req.uri().path().to_owned();
    let ctx = Arc::new(RequestCtx::default());
    req.extensions_mut().insert(ctx.clone());

    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = route.as_deref().unwrap_or("-"),
        user = tracing::field::Empty,
    );
    let mut resp = CURRENT_REQUEST_ID
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;

    let status = resp.status().as_u16();
    let latency = started.elapsed();
    let route_label = route.unwrap_or_else(|| "unmatched".to_owned());
    let labels = [
        ("method", method.to_string()),
        ("route", route_label),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(latency.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            path = %path,
            status,
            latency_ms = latency.as_secs_f64() * 1000.0,
            user = ctx.user.get().map(String::as_str).unwrap_or("-"),
            "request"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID.clone(), v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_clients_are_sanitised() {
        assert_eq!(
            usable_request_id(&HeaderValue::from_static("abc-123")),
            Some("abc-123")
        );
        assert_eq!(usable_request_id(&HeaderValue::from_static("a b\"c")), None);
        assert_eq!(
            usable_request_id(&HeaderValue::from_str(&"x".repeat(200)).unwrap()),
            None
        );
    }
}
