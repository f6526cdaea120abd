//! One error type for the whole API, rendered as RFC 9457 problem+json.
//!
//! Internal causes are logged with the request id and never sent to clients.

use std::borrow::Cow;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::backend::error::{BackendError, Missing};
use crate::telemetry::current_request_id;

/// The body of every error response (`application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[schema(example = "https://lxgate.dev/problems/not_found")]
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, human-readable summary of the problem type.
    #[schema(example = "Not Found")]
    pub title: String,
    /// The HTTP status code.
    #[schema(example = 404)]
    pub status: u16,
    /// What went wrong with this request.
    #[schema(example = "user `bob` does not exist")]
    pub detail: String,
    /// Stable machine-readable code (snake_case).
    #[schema(example = "user_not_found")]
    pub code: String,
    /// The request id, also sent as the `x-request-id` header.
    pub request_id: Option<String>,
    /// The request field the problem is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For 403: the permission that was missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
    /// For 403: the project the permission was checked in (absent for global permissions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// For 403: the least role that grants what was refused (in `project`
    /// when there is one; `admin` for what the instance policy keeps to
    /// admins). Absent when no role would help (a read-only token).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::auth::Role>)]
    pub required_role: Option<String>,
    /// For 429: seconds until a retry may succeed (also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// Boxed so `Result<T, ApiError>` stays one pointer wide on the happy path.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ApiError(Box<ErrorInner>);

#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {detail}")]
pub struct ErrorInner {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub detail: String,
    pub field: Option<String>,
    pub permission: Option<String>,
    pub project: Option<String>,
    pub required_role: Option<&'static str>,
    pub retry_after: Option<u64>,
    /// Logged, never returned.
    #[source]
    pub source: Option<anyhow::Error>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl std::ops::Deref for ApiError {
    type Target = ErrorInner;
    fn deref(&self) -> &ErrorInner {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ErrorInner {
        &mut self.0
    }
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> Self {
        Self(Box::new(ErrorInner {
            status,
            code: code.into(),
            detail: detail.into(),
            field: None,
            permission: None,
            project: None,
            required_role: None,
            retry_after: None,
            source: None,
        }))
    }

    pub fn bad_request(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unauthorized(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    pub fn forbidden(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    /// 403 `policy_denied`: the instance policy keeps this to admins (or
    /// to what an admin allowed the project).
    pub fn policy_denied(detail: impl Into<String>) -> Self {
        let mut e = Self::forbidden("policy_denied", detail);
        e.required_role = Some("admin");
        e
    }

    pub fn not_found(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn conflict(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// 422 about one field of the request body.
    pub fn invalid_field(field: &str, detail: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            detail,
        );
        e.field = Some(field.to_owned());
        e
    }

    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry in {retry_after_secs} s"),
        );
        e.retry_after = Some(retry_after_secs);
        e
    }

    pub fn not_implemented(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "not_supported", detail)
    }

    /// A failure the client cannot fix: logged in full, answered with a generic 500.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; quote the request id when reporting it",
        );
        e.source = Some(source.into());
        e
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_source(mut self, source: impl Into<anyhow::Error>) -> Self {
        self.source = Some(source.into());
        self
    }
}

fn title(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = *self.0;
        let request_id = current_request_id();
        if this.status.is_server_error() {
            match &this.source {
                Some(src) => tracing::error!(
                    request_id = request_id.as_deref().unwrap_or("-"),
                    code = %this.code,
                    error = format!("{src:#}"),
                    "request failed"
                ),
                None => tracing::warn!(
                    request_id = request_id.as_deref().unwrap_or("-"),
                    code = %this.code,
                    detail = %this.detail,
                    "request failed"
                ),
            }
        } else if let Some(src) = &this.source {
            tracing::debug!(code = %this.code, error = format!("{src:#}"), "client error");
        }
        if this.status == StatusCode::TOO_MANY_REQUESTS {
            metrics::counter!("lxgate_rate_limited_total", "code" => this.code.to_string())
                .increment(1);
        }
        let body = Problem {
            kind: format!("https://lxgate.dev/problems/{}", this.code),
            title: title(this.status).to_owned(),
            status: this.status.as_u16(),
            detail: this.detail,
            code: this.code.into_owned(),
            request_id,
            field: this.field,
            permission: this.permission,
            project: this.project,
            required_role: this.required_role.map(str::to_owned),
            retry_after: this.retry_after,
        };
        let mut resp = (
            this.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            serde_json::to_vec(&body).unwrap_or_default(),
        )
            .into_response();
        if let Some(secs) = this.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if this.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lxgate\""),
            );
        }
        resp
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return Self::conflict("already_exists", "a resource with this name already exists")
                .with_source(e);
        }
        if database_away(&e) {
            return Self::database_unavailable().with_source(e);
        }
        Self::internal(e)
    }
}

impl ApiError {
    pub fn database_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database is not answering; try again shortly",
        )
    }
}

/// The database is away (stopped, restarting, unreachable, out of
/// connections) rather than the request being wrong: a 503 the client may
/// retry, not a 500.
fn database_away(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        // SQLSTATE classes 08 (connection exception) and 57P (operator
        // intervention: shutdown, crash, cannot connect now), and 53300
        // (too many connections).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300"),
        _ => false,
    }
}

/// The code of each kind of 404 a backend reports; the detail is the
/// `Missing`'s own sentence.
fn not_found_code(m: &Missing) -> &'static str {
    match m {
        Missing::Instance { .. } => "instance_not_found",
        Missing::Snapshot { .. } => "snapshot_not_found",
        Missing::Backup { .. } => "backup_not_found",
        Missing::Log { .. } => "log_not_found",
        Missing::File { .. } | Missing::FileDirectory { .. } => "file_not_found",
        Missing::Image { .. } | Missing::AliasTarget { .. } => "image_not_found",
        Missing::ImageAlias { .. } => "alias_not_found",
        Missing::Pool { .. } => "storage_pool_not_found",
        Missing::Volume { .. } => "volume_not_found",
        Missing::VolumeSnapshot { .. } => "volume_snapshot_not_found",
        Missing::Network { .. } | Missing::ManagedNetwork { .. } => "network_not_found",
        Missing::Project { .. } => "project_not_found",
        Missing::Profile { .. } => "profile_not_found",
        Missing::Operation { .. } => "operation_not_found",
        Missing::Member { .. } => "member_not_found",
        Missing::Other(_) => "not_found",
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NotFound(m) => Self::not_found(not_found_code(&m), m.to_string()),
            BackendError::Conflict(m) => Self::conflict("conflict", m),
            BackendError::PreconditionFailed(m) => {
                Self::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", m)
            }
            BackendError::BadRequest(m) => Self::bad_request("bad_request", m),
            BackendError::Restricted(m) => Self::forbidden(
                "policy_denied",
                format!("refused by the project's restrictions in the backend: {m}; an admin can allow it for this project (project config `user.lxgate.allow.config` / `user.lxgate.allow.devices`)"),
            ),
            BackendError::NotSupported(m) => Self::not_implemented(m),
            BackendError::Unavailable(m) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend_unavailable",
                "the backend is unavailable; try again shortly",
            )
            .with_source(anyhow::anyhow!(m)),
            BackendError::Timeout(m) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "backend_timeout",
                "the backend did not answer in time",
            )
            .with_source(anyhow::anyhow!(m)),
            BackendError::Forbidden(m) => Self::new(
                StatusCode::BAD_GATEWAY,
                "backend_forbidden",
                "the backend refused lxgate's credentials",
            )
            .with_source(anyhow::anyhow!(m)),
            BackendError::TlsFailure(m) => Self::new(
                StatusCode::BAD_GATEWAY,
                "backend_tls_failure",
                "the TLS connection to the backend failed (untrusted server certificate or protocol mismatch)",
            )
            .with_source(anyhow::anyhow!(m)),
            BackendError::ImageTooLarge(m) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "image_too_large", m)
            }
            BackendError::InsufficientStorage(m) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", m)
            }
            BackendError::Upstream(m) => Self::new(StatusCode::BAD_GATEWAY, "backend_error", m),
            BackendError::Internal(e) => Self::internal(e),
        }
    }
}

/// Splits serde_path_to_error's "path: message" into the field and a message.
fn field_of(text: &str) -> (Option<String>, String) {
    let msg = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .unwrap_or(text);
    if let Some((path, _)) = msg.split_once(": ")
        && path != "."
        && !path.contains(' ')
    {
        return (Some(path.to_owned()), msg.to_owned());
    }
    // Root-level errors name the field in backticks: "unknown field `x`", "missing field `y`".
    let field = msg
        .split('`')
        .nth(1)
        .filter(|_| msg.contains("field `"))
        .map(str::to_owned);
    let msg = msg.strip_prefix(".: ").unwrap_or(msg).to_owned();
    (field, msg)
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => {
                let (field, msg) = field_of(&e.body_text());
                let mut err = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", msg);
                err.field = field;
                err
            }
            JsonRejection::JsonSyntaxError(e) => Self::bad_request(
                "invalid_json",
                format!("the request body is not valid JSON: {}", e.body_text()),
            ),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a body with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(e) => {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Self::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "the request body is larger than this endpoint accepts",
                    )
                } else {
                    Self::bad_request("invalid_body", e.body_text())
                }
            }
            other => Self::bad_request("invalid_body", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        let text = r.body_text();
        let msg = text
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&text);
        Self::bad_request("invalid_query", format!("invalid query string: {msg}"))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request("invalid_path", r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_extracted_from_serde_messages() {
        let (f, _) = field_of(
            "Failed to deserialize the JSON body into the target type: password: invalid type: integer `5`, expected a string at line 1 column 14",
        );
        assert_eq!(f.as_deref(), Some("password"));
        let (f, _) = field_of(
            "Failed to deserialize the JSON body into the target type: unknown field `admin`, expected `username` or `password` at line 1 column 8",
        );
        assert_eq!(f.as_deref(), Some("admin"));
        let (f, _) = field_of(
            "Failed to deserialize the JSON body into the target type: missing field `password` at line 1 column 2",
        );
        assert_eq!(f.as_deref(), Some("password"));
    }

    #[test]
    fn each_missing_thing_is_answered_with_its_code_and_detail() {
        let s = String::from;
        let cases = [
            (
                Missing::Instance { name: s("web") },
                "instance_not_found",
                "instance `web` does not exist",
            ),
            (
                Missing::Snapshot {
                    instance: s("web"),
                    name: s("snap0"),
                },
                "snapshot_not_found",
                "instance `web` has no snapshot `snap0`",
            ),
            (
                Missing::Backup {
                    instance: s("web"),
                    name: s("b1"),
                },
                "backup_not_found",
                "instance `web` has no backup `b1`",
            ),
            (
                Missing::Log {
                    instance: s("web"),
                    file: s("qemu.log"),
                },
                "log_not_found",
                "instance `web` has no log file `qemu.log`",
            ),
            (
                Missing::File {
                    instance: s("web"),
                    path: s("/etc/x"),
                },
                "file_not_found",
                "instance `web` has no file `/etc/x`",
            ),
            (
                Missing::FileDirectory {
                    instance: s("web"),
                    path: s("/no/x"),
                },
                "file_not_found",
                "instance `web` does not exist, or the directory of `/no/x` does not exist in it",
            ),
            (
                Missing::Image {
                    fingerprint: s("abc1"),
                },
                "image_not_found",
                "no image matches fingerprint `abc1`",
            ),
            (
                Missing::AliasTarget {
                    project: s("team"),
                    target: s("abc1"),
                },
                "image_not_found",
                "no image in project `team` matches target `abc1`",
            ),
            (
                Missing::ImageAlias { name: s("deb") },
                "alias_not_found",
                "image alias `deb` does not exist",
            ),
            (
                Missing::Pool { name: s("fast") },
                "storage_pool_not_found",
                "storage pool `fast` does not exist",
            ),
            (
                Missing::Volume {
                    pool: s("fast"),
                    name: s("data"),
                    reason: s("Storage volume not found"),
                },
                "volume_not_found",
                "custom volume `data` in storage pool `fast` does not exist (Storage volume not found)",
            ),
            (
                Missing::VolumeSnapshot {
                    pool: s("fast"),
                    volume: s("data"),
                    name: s("snap0"),
                    reason: s("Storage volume snapshot not found"),
                },
                "volume_snapshot_not_found",
                "custom volume `data` in storage pool `fast` has no snapshot `snap0` (Storage volume snapshot not found)",
            ),
            (
                Missing::Network { name: s("br0") },
                "network_not_found",
                "network `br0` does not exist",
            ),
            (
                Missing::ManagedNetwork { name: s("eth0") },
                "network_not_found",
                "network `eth0` does not exist or is not managed (only managed networks have leases)",
            ),
            (
                Missing::Project { name: s("team") },
                "project_not_found",
                "project `team` does not exist",
            ),
            (
                Missing::Profile { name: s("gpu") },
                "profile_not_found",
                "profile `gpu` does not exist",
            ),
            (
                Missing::Operation { id: s("6f1c") },
                "operation_not_found",
                "operation `6f1c` does not exist",
            ),
            (
                Missing::Member { name: s("m2") },
                "member_not_found",
                "cluster member `m2` does not exist",
            ),
            (
                Missing::Other(s("the websocket no longer exists")),
                "not_found",
                "the websocket no longer exists",
            ),
        ];
        for (missing, code, detail) in cases {
            let e: ApiError = BackendError::NotFound(missing).into();
            assert_eq!(
                (e.status, e.code.as_ref(), e.detail.as_str()),
                (StatusCode::NOT_FOUND, code, detail)
            );
        }
    }

    #[test]
    fn image_refusals_name_the_setting() {
        let e: ApiError = crate::backend::error::image_too_large("the upload", 64 << 20).into();
        assert_eq!(
            (e.status, e.code.as_ref(), e.detail.as_str()),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "image_too_large",
                "the upload is larger than MAX_IMAGE_BYTES allows (64 MiB)"
            )
        );
    }
}
