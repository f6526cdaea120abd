//! What the handlers of every resource share: the `?project=` queries and
//! the checked project they name, list entries (`expand=false` gives names),
//! `If-Match`, 201 and ETag answers, and the 404 of an instance path.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::{Json, Pagination};
use crate::backend::Listing;
use crate::error::{ApiError, ApiResult};
use crate::names::{ImageFingerprint, ProjectName};

/// A query with `?project=` (documented as `ProjectParam`): the project it
/// names, checked. Read in the handler, after the extractors, so a bad body
/// is still answered before a bad project.
pub trait ProjectScoped {
    /// `?project=` as sent.
    fn project_param(&self) -> Option<&str>;

    /// `?project=`, validated (400 `invalid_name`); `default` when absent or
    /// empty, as in Incus.
    fn project(&self) -> ApiResult<ProjectName> {
        match self.project_param() {
            None | Some("") => Ok(ProjectName::default()),
            Some(p) => ProjectName::parse(p).map_err(|e| ApiError::bad_request("invalid_name", e)),
        }
    }
}

/// `ProjectScoped` for query structs with a `project: Option<String>` field.
macro_rules! project_scoped {
    ($($query:ty),+ $(,)?) => {
        $(impl $crate::api::resource::ProjectScoped for $query {
            fn project_param(&self) -> Option<&str> {
                self.project.as_deref()
            }
        })+
    };
}
pub(crate) use project_scoped;

project_scoped!(
    ProjectQuery,
    ProjectWaitQuery,
    ProjectListQuery,
    PlacementQuery
);

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectWaitQuery {
    /// The project (default `default`).
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
    /// Wait up to this many seconds (max 300) for the operation to finish.
    #[param(value_type = Option<crate::api::schemas::WaitSeconds>)]
    pub wait: Option<u64>,
}

/// The query of a create that can pick the cluster member (`?target=`).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PlacementQuery {
    /// The project (default `default`).
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
    /// Wait up to this many seconds (max 300) for the operation to finish.
    #[param(value_type = Option<crate::api::schemas::WaitSeconds>)]
    pub wait: Option<u64>,
    /// The cluster member to create it on (see `GET cluster/members`; the
    /// backend picks one when absent). Admins may always choose; others
    /// only in a project whose config has `restricted.cluster.target=allow`.
    #[param(value_type = Option<crate::names::MemberName>)]
    pub target: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectQuery {
    /// The project (default `default`).
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectListQuery {
    /// The project (default `default`).
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
    /// Full objects (default) or only names.
    pub expand: Option<bool>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

impl ProjectListQuery {
    pub fn page(&self) -> ApiResult<(i64, i64)> {
        Pagination {
            limit: self.limit,
            offset: self.offset,
        }
        .resolve()
    }
}

/// A list entry: the object, or its name with `expand=false`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Entry<T> {
    Full(Box<T>),
    Name(String),
}

pub fn entries<T>(listing: Listing<T>) -> Vec<Entry<T>> {
    listing.into_entries(|i| Entry::Full(Box::new(i)), Entry::Name)
}

/// The `If-Match` header: the ETag a client read, to make a change apply
/// to that version only (412 otherwise). A value that is not visible ASCII
/// counts as absent. Each handler declares the header in its `params(...)`
/// (`"if-match"`, saying what changed since).
#[derive(Debug, Default)]
pub struct IfMatch(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self(
            parts
                .headers
                .get(header::IF_MATCH)
                .and_then(|v| v.to_str().ok())
                .map(crate::api::conditional::version_of),
        ))
    }
}

/// A `source` that names an image by `alias` or by `fingerprint`: exactly
/// one of them, each checked (the alias by `check_alias`: a local alias and
/// one on a remote server have different rules).
pub fn check_image_source(
    alias: Option<&str>,
    fingerprint: Option<&str>,
    check_alias: impl FnOnce(&str) -> ApiResult<()>,
) -> ApiResult<()> {
    match (alias, fingerprint) {
        (Some(a), None) => check_alias(a),
        (None, Some(f)) => ImageFingerprint::parse(f)
            .map(drop)
            .map_err(|e| ApiError::invalid_field("source.fingerprint", e)),
        _ => Err(ApiError::invalid_field(
            "source",
            "give exactly one of source.alias and source.fingerprint",
        )),
    }
}

/// `resp` with an `ETag` header, when there is one.
pub fn with_etag(mut resp: Response, etag: Option<String>) -> Response {
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// 201 with the new resource and its URL.
pub fn created<T: Serialize>(location: &str, body: T) -> Response {
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// An RFC 3339 timestamp, checked before it reaches the backend.
pub fn check_expiry(field: &str, at: Option<&str>) -> ApiResult<()> {
    if let Some(at) = at
        && time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).is_err()
    {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} must be an RFC 3339 time, e.g. 2030-01-01T00:00:00Z"),
        ));
    }
    Ok(())
}
