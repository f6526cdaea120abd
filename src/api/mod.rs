//! The HTTP API: extractors and envelopes shared by every resource module.

pub mod accounts;
pub mod availability;
pub mod conditional;
pub mod devices;
pub mod health;
pub mod idempotency;
pub mod image_source;
pub mod operation;
pub mod owners;
pub mod ownership;
pub mod paths;
pub mod policy;
pub mod problems;
pub mod quotas;
pub mod requesters;
pub mod resource;
pub mod schemas;
pub mod slots;
pub mod sources;
pub mod upload;
pub mod v1;
pub mod ws;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::auth::limit::client_ip;
use crate::error::ApiError;

impl From<crate::auth::password::HashError> for ApiError {
    fn from(e: crate::auth::password::HashError) -> Self {
        ApiError::internal(e)
    }
}

impl From<crate::auth::accounts::CreateError> for ApiError {
    fn from(e: crate::auth::accounts::CreateError) -> Self {
        use crate::auth::accounts::CreateError;
        match e {
            CreateError::WeakPassword(why) => ApiError::invalid_field("password", why),
            CreateError::Exists(name) => {
                ApiError::conflict("user_exists", format!("user `{name}` already exists"))
                    .with_field("username")
            }
            CreateError::Hash(e) => e.into(),
            CreateError::Db(e) => e.into(),
        }
    }
}

/// `axum::Json` whose rejections come back as problem+json.
///
/// A number with a zero fraction (`30.0`) is read as the integer it is, as
/// JSON Schema's `integer` (and so the OpenAPI contract) counts it: serde
/// alone refuses a float where the field is an integer.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        // Content type, size limit and syntax: axum's checks and rejections.
        let axum::Json(raw) =
            axum::Json::<Box<serde_json::value::RawValue>>::from_request(req, state).await?;
        object_body(raw.get().as_bytes())?;
        no_nul(raw.get().as_bytes())?;
        match axum::Json::<T>::from_bytes(raw.get().as_bytes()) {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(axum::extract::rejection::JsonRejection::JsonDataError(e))
                if e.body_text().contains("invalid type: floating point") =>
            {
                // Once more with `30.0` as `30`; the document goes through a
                // `Value`, which would drop a duplicate key: those are refused
                // here as the derive refuses them.
                let _: DuplicateKeyCheck = serde_json::from_str(raw.get()).map_err(|d| {
                    ApiError::new(
                        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                        "validation_failed",
                        d.to_string(),
                    )
                })?;
                let mut value: serde_json::Value =
                    serde_json::from_str(raw.get()).map_err(ApiError::internal)?;
                integral_floats_as_integers(&mut value);
                let bytes = serde_json::to_vec(&value).map_err(ApiError::internal)?;
                let axum::Json(v) = axum::Json::<T>::from_bytes(&bytes)?;
                Ok(Json(v))
            }
            Err(other) => Err(other.into()),
        }
    }
}

impl<T: serde::de::DeserializeOwned> Json<T> {
    /// A body the extractor already read as JSON (`Json<Value>`, for a
    /// handler that picks the type from a field), typed with the same 422s.
    pub fn from_value(value: serde_json::Value) -> Result<Self, ApiError> {
        let bytes = serde_json::to_vec(&value).map_err(ApiError::internal)?;
        let axum::Json(v) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Json(v))
    }
}

/// An optional JSON body a handler reads itself (empty: `T::default()`), with
/// the same reading of `30.0` as [`Json`]. Refusals are 422 `validation_failed`.
pub fn optional_json_body<T>(body: &[u8]) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned + Default,
{
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    object_body(body)?;
    no_nul(body)?;
    let invalid = |e: serde_json::Error| {
        ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("invalid body: {e}"),
        )
    };
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(e) if e.to_string().contains("invalid type: floating point") => {
            let _: DuplicateKeyCheck = serde_json::from_slice(body).map_err(invalid)?;
            let mut value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
            integral_floats_as_integers(&mut value);
            serde_json::from_value(value).map_err(invalid)
        }
        Err(e) => Err(invalid(e)),
    }
}

/// No string of a JSON body (key or value) may hold U+0000: Incus stores
/// text as C strings and cuts it at the NUL (a description silently
/// shortened; a network whose stored type no longer loads, 502), argv and
/// LXC's config files cannot carry one either. The schema says so on every
/// free-text field of a request (`openapi::CommonResponses`). Answered 422
/// `validation_failed` naming the field.
fn no_nul(body: &[u8]) -> Result<(), ApiError> {
    // JSON can only spell NUL as the escape `\u0000`: no such bytes, no NUL
    // (the common case costs one scan). Otherwise look properly: the bytes
    // may be an escaped backslash followed by `u0000`.
    if !body.windows(6).any(|w| w == b"\\u0000") {
        return Ok(());
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(()); // the typed read answers syntax errors
    };
    match nul_at(&value, String::new()) {
        Some(field) => Err(ApiError::invalid_field(
            &field,
            format!("`{field}` contains a NUL character (U+0000), which no field takes"),
        )),
        None => Ok(()),
    }
}

/// The path (`config.user.x`, `devices.root.pool`, `command[1]`) of the first
/// key or string holding U+0000.
fn nul_at(value: &serde_json::Value, at: String) -> Option<String> {
    let join = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(at),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, format!("{at}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(join(&k.replace('\0', "\\u0000")))
            } else {
                nul_at(v, join(k))
            }
        }),
        _ => None,
    }
}

/// Every JSON body of the API is an object; serde's derive would also read
/// a struct from an array of its fields in order (`[null, null]`), which
/// the schema does not allow.
fn object_body(body: &[u8]) -> Result<(), ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => Ok(()),
        Some(_) => Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "the body must be a JSON object",
        )),
    }
}

/// Walks a JSON document and fails on an object with a key given twice.
struct DuplicateKeyCheck;

impl<'de> Deserialize<'de> for DuplicateKeyCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DuplicateKeyCheck;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate field `{key}`")));
                    }
                    map.next_value::<DuplicateKeyCheck>()?;
                }
                Ok(DuplicateKeyCheck)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<DuplicateKeyCheck>()?.is_some() {}
                Ok(DuplicateKeyCheck)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(DuplicateKeyCheck)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(DuplicateKeyCheck)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(DuplicateKeyCheck)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(DuplicateKeyCheck)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(DuplicateKeyCheck)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(DuplicateKeyCheck)
            }
        }
        d.deserialize_any(V)
    }
}

fn integral_floats_as_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
            {
                if f >= i64::MIN as f64 && f < i64::MAX as f64 {
                    *n = (f as i64).into();
                } else if f >= 0.0 && f < u64::MAX as f64 {
                    *n = (f as u64).into();
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path` with problem+json rejections. Handlers extract one
/// of the path structs of `crate::api::paths` (`Path<InstancePath>`,
/// `Path<InstanceSnapshotPath>`...), whose fields are the checked name
/// types, and name the same struct in their `params(...)`, so what is
/// checked is what is documented. A value its type refuses is 400
/// `invalid_name` with the type's own reason, before the handler runs. Other
/// failures (a value that is not UTF-8) are 400 `invalid_path`.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            // A custom message comes only from a type's own check: the names'
            // `TryFrom<String>` (a value a `String` takes never fails so).
            Err(PathRejection::FailedToDeserializePathParams(e)) => match e.kind() {
                ErrorKind::Message(why) | ErrorKind::DeserializeError { message: why, .. } => {
                    Err(ApiError::bad_request("invalid_name", why.clone()))
                }
                _ => Err(PathRejection::FailedToDeserializePathParams(e).into()),
            },
            Err(other) => Err(other.into()),
        }
    }
}

/// The list envelope of DESIGN §2.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Items matching the request, across all pages.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

impl<T> Page<T> {
    /// One page of a list the backend returned whole.
    pub fn slice(all: Vec<T>, limit: i64, offset: i64) -> Self {
        let total = all.len() as i64;
        let items = all
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(0))
            .collect();
        Self {
            items,
            total,
            limit,
            offset,
        }
    }

    /// The same page with each item changed by `f`.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            total: self.total,
            limit: self.limit,
            offset: self.offset,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Pagination {
    /// Page size (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

impl Pagination {
    pub const DEFAULT_LIMIT: i64 = 100;
    pub const MAX_LIMIT: i64 = 1000;

    /// (limit, offset), validated.
    pub fn resolve(&self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(Self::DEFAULT_LIMIT);
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be between 1 and {}", Self::MAX_LIMIT),
            ));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return Err(ApiError::bad_request(
                "invalid_query",
                "offset cannot be negative",
            ));
        }
        Ok((limit, offset))
    }
}

/// Unix seconds as RFC 3339 (`2026-11-23T22:38:16Z`).
pub fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// The client's address (see `TRUSTED_PROXIES`).
pub struct ClientIp(pub std::net::IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip())
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no peer address on request")))?;
        Ok(Self(client_ip(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

/// Put first in the argument list of a handler to apply the per-IP auth rate
/// limit before anything else (body parsing, password hashing) happens.
pub struct AuthRateLimit;

impl FromRequestParts<AppState> for AuthRateLimit {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        state.auth_limiter.check(ip).map_err(|wait| {
            tracing::info!(client_ip = %ip, "auth rate limit hit");
            ApiError::too_many_requests(wait.max(1))
        })?;
        Ok(Self)
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::Path;
    use super::paths::InstanceSnapshotPath;
    use crate::names::{InstanceName, SnapshotName};

    async fn snapshot_path(
        Path(InstanceSnapshotPath { name, snap }): Path<InstanceSnapshotPath>,
    ) -> String {
        format!("{name}/{snap}")
    }

    async fn get_path(uri: &str) -> (StatusCode, String) {
        let app = Router::new()
            .route(
                "/i/{name}",
                get(|Path(name): Path<InstanceName>| async move { name.to_string() }),
            )
            .route(
                "/i/{name}/s/{snap}",
                get(
                    |Path((name, snap)): Path<(InstanceName, SnapshotName)>| async move {
                        format!("{name}/{snap}")
                    },
                ),
            )
            .route("/p/{name}/s/{snap}", get(snapshot_path));
        let req = Request::get(uri).body(Body::empty()).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn problem(body: &str) -> (String, String) {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        (
            v["code"].as_str().unwrap().to_owned(),
            v["detail"].as_str().unwrap().to_owned(),
        )
    }

    #[tokio::test]
    async fn path_names_are_checked_as_they_are_extracted() {
        assert_eq!(get_path("/i/web-1").await, (StatusCode::OK, "web-1".into()));
        assert_eq!(
            get_path("/i/web-1/s/snap0").await,
            (StatusCode::OK, "web-1/snap0".into())
        );
        // The type's own reason, as `parse` gives it.
        for (uri, why) in [
            ("/i/bad_name", InstanceName::parse("bad_name").unwrap_err()),
            ("/i/a%20b", InstanceName::parse("a b").unwrap_err()),
            ("/i/1x/s/snap0", InstanceName::parse("1x").unwrap_err()),
            ("/i/web-1/s/a.b", SnapshotName::parse("a.b").unwrap_err()),
        ] {
            let (status, body) = get_path(uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(problem(&body), ("invalid_name".into(), why), "{uri}");
        }
        // Not a name problem: the URL itself.
        let (status, body) = get_path("/i/%FF").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(problem(&body).0, "invalid_path");
    }

    /// A NUL anywhere in a JSON body is refused, naming where; an escaped
    /// backslash before `u0000` is plain text.
    #[test]
    fn nul_in_a_body_is_refused_naming_the_field() {
        let field = |body: &str| super::no_nul(body.as_bytes()).map_err(|e| e.field.clone());
        assert_eq!(
            field(r#"{"description": "a\u0000b"}"#),
            Err(Some("description".into()))
        );
        assert_eq!(
            field(r#"{"config": {"user.x": "ok", "user.y": "\u0000"}}"#),
            Err(Some("config.user.y".into()))
        );
        assert_eq!(
            field(r#"{"command": ["sh", "-c", "x\u0000"]}"#),
            Err(Some("command[2]".into()))
        );
        assert_eq!(
            field(r#"{"config": {"a\u0000": "1"}}"#),
            Err(Some("config.a\\u0000".into()))
        );
        assert_eq!(field(r#"{"description": "a\\u0000b"}"#), Ok(()));
        assert_eq!(field(r#"{"description": "plain"}"#), Ok(()));
    }

    /// The handlers extract the structs of `api::paths`, which axum
    /// deserializes as a map keyed by placeholder, not as a sequence like a
    /// tuple: each field must still answer with its own type's reason.
    #[tokio::test]
    async fn path_structs_are_checked_field_by_field() {
        assert_eq!(
            get_path("/p/web-1/s/snap0").await,
            (StatusCode::OK, "web-1/snap0".into())
        );
        for (uri, why) in [
            (
                "/p/bad_name/s/snap0",
                InstanceName::parse("bad_name").unwrap_err(),
            ),
            ("/p/a%20b/s/snap0", InstanceName::parse("a b").unwrap_err()),
            ("/p/web-1/s/a.b", SnapshotName::parse("a.b").unwrap_err()),
            ("/p/web-1/s/a%20b", SnapshotName::parse("a b").unwrap_err()),
        ] {
            let (status, body) = get_path(uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(problem(&body), ("invalid_name".into(), why), "{uri}");
        }
        let (status, body) = get_path("/p/web-1/s/%FF").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(problem(&body).0, "invalid_path");
    }
}
