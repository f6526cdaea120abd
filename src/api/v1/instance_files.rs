//! `/api/v1/instances/{name}/logs`, `/console/log` and `/files`: an
//! instance's log files, its console output, and files inside it. Content is
//! streamed both ways, never held whole in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::paths::{InstancePath, LogPath};
use crate::api::policy;
use crate::api::problems::{GuestOperator403, InstanceMissing, Viewer403};
use crate::api::resource::ProjectQuery;
use crate::api::resource::{ProjectScoped, project_scoped};
use crate::api::schemas::BinaryContent;
use crate::api::{Json, Page, Pagination, Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::{DirectoryListing, Download, FileMeta, FilePull, FilePush};
use crate::error::{ApiError, ApiResult, Problem};

/// The largest file `POST /files` accepts (the request's own body limit;
/// the global `MAX_BODY_BYTES` is for JSON bodies).
pub const MAX_PUSH_BYTES: u64 = 1 << 30;

/// Longest `?path=` accepted (Linux's `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;

/// `?path=`: required, absolute, no NUL, at most `PATH_MAX`.
fn file_path(p: Option<&str>) -> ApiResult<&str> {
    let p = p.unwrap_or_default();
    if p.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_path",
            "?path= is required: an absolute path inside the instance",
        ));
    }
    if !p.starts_with('/') {
        return Err(ApiError::bad_request(
            "invalid_path",
            "path must be absolute (start with '/')",
        ));
    }
    if p.contains('\0') || p.len() > MAX_PATH_BYTES {
        return Err(ApiError::bad_request(
            "invalid_path",
            format!("path must not contain NUL and must be at most {MAX_PATH_BYTES} bytes"),
        ));
    }
    Ok(p)
}

/// A streamed body with the backend's length (when known) and our type.
fn streamed(content: Download, content_type: &'static str) -> Response {
    let mut resp = Body::from_stream(content.stream).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(len) = content.content_length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListLogsQuery {
    /// The project (default `default`).
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// List an instance's log files (names, e.g. `lxc.log`).
#[utoipa::path(get, path = "/logs", tag = "instances", operation_id = "list_instance_logs",
    security(("bearer" = [])),
    params(InstancePath, ListLogsQuery),
    responses(
        (status = 200, description = "A page of log file names", body = Page<String>),
        Viewer403, InstanceMissing))]
pub async fn list_instance_logs(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ListLogsQuery>,
) -> ApiResult<Json<Page<String>>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (limit, offset) = Pagination {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve()?;
    let files = state.backend.list_instance_logs(&project, &name).await?;
    Ok(Json(Page::slice(files, limit, offset)))
}

/// Read one of an instance's log files (plain text, streamed).
#[utoipa::path(get, path = "/logs/{file}", tag = "instances", operation_id = "get_instance_log",
    security(("bearer" = [])),
    params(LogPath, ProjectQuery),
    responses(
        (status = 200, description = "The log file", content_type = "text/plain", body = String),
        Viewer403,
        (status = 404, description = "No such instance or log file", body = Problem, content_type = "application/problem+json")))]
pub async fn get_instance_log(
    user: AuthUser,
    State(state): State<AppState>,
    Path(LogPath { name, file }): Path<LogPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let content = state
        .backend
        .get_instance_log(&project, &name, &file)
        .await?;
    Ok(streamed(content, "text/plain; charset=utf-8"))
}

/// What the instance has written to its console so far (plain text; empty
/// for an instance that has not run).
#[utoipa::path(get, path = "/console/log", tag = "instances", operation_id = "get_console_log",
    security(("bearer" = [])),
    params(InstancePath, ProjectQuery),
    responses(
        (status = 200, description = "The console output", content_type = "text/plain", body = String),
        Viewer403, InstanceMissing))]
pub async fn get_console_log(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let content = state.backend.console_log(&project, &name).await?;
    Ok(streamed(content, "text/plain; charset=utf-8"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PullQuery {
    /// The project (default `default`).
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
    /// Absolute path inside the instance.
    #[param(required = true, value_type = crate::api::schemas::AbsolutePath)]
    pub path: Option<String>,
}

const X_FILE_TYPE: HeaderName = HeaderName::from_static("x-file-type");
const X_FILE_UID: HeaderName = HeaderName::from_static("x-file-uid");
const X_FILE_GID: HeaderName = HeaderName::from_static("x-file-gid");
const X_FILE_MODE: HeaderName = HeaderName::from_static("x-file-mode");

fn set_file_headers(headers: &mut HeaderMap, meta: &FileMeta) {
    if let Ok(v) = HeaderValue::from_str(&meta.kind) {
        headers.insert(X_FILE_TYPE, v);
    }
    if let Some(uid) = meta.uid {
        headers.insert(X_FILE_UID, HeaderValue::from(uid));
    }
    if let Some(gid) = meta.gid {
        headers.insert(X_FILE_GID, HeaderValue::from(gid));
    }
    if let Some(mode) = meta.mode
        && let Ok(v) = HeaderValue::from_str(&format!("{mode:04o}"))
    {
        headers.insert(X_FILE_MODE, v);
    }
}

/// The last path component, reduced to characters safe in a header.
fn download_name(path: &str) -> String {
    let base: String = path
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if base.is_empty() || base.chars().all(|c| c == '.') {
        "file".to_owned()
    } else {
        base
    }
}

/// Pull a file out of an instance: its bytes, streamed (a symlink gives its
/// target). A directory gives a JSON listing of its entries. Owner, group,
/// mode (octal) and type come in `X-File-*` headers.
#[utoipa::path(get, path = "/files", tag = "instances", operation_id = "pull_file",
    security(("bearer" = [])),
    params(InstancePath, PullQuery),
    responses(
        (status = 200, description = "The file's bytes (`application/octet-stream`), or a directory listing (JSON)",
            content(
                (BinaryContent = "application/octet-stream"),
                (DirectoryListing = "application/json")),
            headers(
                ("x-file-type" = String, description = "`file`, `directory` or `symlink`"),
                ("x-file-uid" = u32, description = "Owner uid"),
                ("x-file-gid" = u32, description = "Owner gid"),
                ("x-file-mode" = String, description = "Permission bits in octal, e.g. `0644`"))),
        GuestOperator403,
        (status = 404, description = "No such instance or file", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The path is a FIFO, socket or device (not transferred), or (Incus) did not open within 8 s because the instance is busy", body = Problem, content_type = "application/problem+json")))]
pub async fn pull_file(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<PullQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    policy::require_inside_access(&state, &user, &project, &name).await?;
    let path = file_path(q.path.as_deref())?;
    let pulled = state.backend.pull_file(&project, &name, path).await?;
    Ok(match pulled {
        FilePull::File { meta, content } => {
            let mut resp = streamed(content, "application/octet-stream");
            let headers = resp.headers_mut();
            set_file_headers(headers, &meta);
            if let Ok(v) =
                HeaderValue::from_str(&format!("attachment; filename=\"{}\"", download_name(path)))
            {
                headers.insert(header::CONTENT_DISPOSITION, v);
            }
            resp
        }
        FilePull::Directory { meta, entries } => {
            let mut resp = Json(DirectoryListing {
                kind: "directory".to_owned(),
                path: path.to_owned(),
                entries,
            })
            .into_response();
            set_file_headers(resp.headers_mut(), &meta);
            resp
        }
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PushQuery {
    /// The project (default `default`).
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
    /// Absolute path inside the instance; its directory must exist.
    #[param(required = true, value_type = crate::api::schemas::AbsolutePath)]
    pub path: Option<String>,
    /// Owner uid for a new file (default 0).
    #[param(value_type = Option<u32>)]
    pub uid: Option<String>,
    /// Owner gid for a new file (default 0).
    #[param(value_type = Option<u32>)]
    pub gid: Option<String>,
    /// Permission bits in octal for a new file (default `0644`).
    #[param(value_type = Option<crate::api::schemas::FileMode>)]
    pub mode: Option<String>,
}

project_scoped!(ListLogsQuery, PullQuery, PushQuery);

fn id_param(field: &str, v: Option<&str>) -> ApiResult<Option<u32>> {
    v.map(|s| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u32>().ok())
            .flatten()
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("{field} must be a number (0-4294967295)"),
                )
            })
    })
    .transpose()
}

fn mode_param(v: Option<&str>) -> ApiResult<Option<u32>> {
    v.map(|s| {
        (!s.is_empty() && s.len() <= 5 && s.bytes().all(|b| matches!(b, b'0'..=b'7')))
            .then(|| u32::from_str_radix(s, 8).ok())
            .flatten()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    "mode must be octal permission bits, e.g. 0644 (at most 7777)",
                )
            })
    })
    .transpose()
}

/// Why an upload stream ended early.
const UPLOAD_OK: u8 = 0;
const UPLOAD_TOO_LARGE: u8 = 1;
const UPLOAD_BROKEN: u8 = 2;

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("a pushed file may be at most {MAX_PUSH_BYTES} bytes"),
    )
}

/// Push a file into an instance: the request body (any media type) is
/// streamed to it, creating or overwriting the file. `uid`, `gid` and `mode`
/// apply to a new file. At most 1 GiB.
#[utoipa::path(post, path = "/files", tag = "instances", operation_id = "push_file",
    security(("bearer" = [])),
    params(InstancePath, PushQuery),
    request_body(content = BinaryContent, content_type = "application/octet-stream",
        description = "The file's content"),
    responses(
        (status = 204, description = "Written"),
        GuestOperator403,
        (status = 400, description = "Invalid name, path, uid, gid or mode, or the upload broke off", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such instance, or the file's directory does not exist", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than 1 GiB", body = Problem, content_type = "application/problem+json")))]
pub async fn push_file(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<PushQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    policy::require_inside_access(&state, &user, &project, &name).await?;
    let path = file_path(q.path.as_deref())?;
    let opts = FilePush {
        uid: id_param("uid", q.uid.as_deref())?,
        gid: id_param("gid", q.gid.as_deref())?,
        mode: mode_param(q.mode.as_deref())?,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_PUSH_BYTES) {
        return Err(too_large());
    }
    // Count what streams through, so an over-long (chunked) upload is cut
    // off and a broken one is told apart from a backend failure.
    let outcome = Arc::new(AtomicU8::new(UPLOAD_OK));
    let seen = outcome.clone();
    let mut total: u64 = 0;
    let stream = body.into_data_stream().map(move |chunk| match chunk {
        Ok(bytes) => {
            total += bytes.len() as u64;
            if total > MAX_PUSH_BYTES {
                seen.store(UPLOAD_TOO_LARGE, Ordering::Relaxed);
                Err(std::io::Error::other("the upload is too large"))
            } else {
                Ok(bytes)
            }
        }
        Err(e) => {
            seen.store(UPLOAD_BROKEN, Ordering::Relaxed);
            Err(std::io::Error::other(e))
        }
    });
    let result = state
        .backend
        .push_file(&project, &name, path, opts, Box::pin(stream))
        .await;
    match (result, outcome.load(Ordering::Relaxed)) {
        (Ok(()), _) => Ok(StatusCode::NO_CONTENT),
        (Err(_), UPLOAD_TOO_LARGE) => Err(too_large()),
        (Err(_), UPLOAD_BROKEN) => Err(ApiError::bad_request(
            "upload_failed",
            "the request body broke off before the file was complete",
        )),
        (Err(e), _) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_modes_and_ids() {
        assert!(file_path(Some("/etc/hostname")).is_ok());
        for bad in [None, Some(""), Some("etc/hostname"), Some("/a\0b")] {
            assert!(file_path(bad).is_err(), "{bad:?}");
        }
        assert!(file_path(Some(&format!("/{}", "a".repeat(MAX_PATH_BYTES)))).is_err());
        assert_eq!(mode_param(Some("0644")).unwrap(), Some(0o644));
        assert_eq!(mode_param(Some("7777")).unwrap(), Some(0o7777));
        assert_eq!(mode_param(None).unwrap(), None);
        for bad in ["", "8", "0o644", "-1", "17777", "999", "644 "] {
            assert!(mode_param(Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(id_param("uid", Some("1000")).unwrap(), Some(1000));
        for bad in ["", "-1", "+1", "x", "4294967296"] {
            assert!(id_param("uid", Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn download_names_are_header_safe() {
        assert_eq!(download_name("/etc/hostname"), "hostname");
        assert_eq!(download_name("/a/b c\"d/"), "b_c_d");
        assert_eq!(download_name("/"), "file");
        assert_eq!(download_name("/x/.."), "file");
    }
}
