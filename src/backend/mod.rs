//! The backend boundary: what the API layer may ask of whatever runs the
//! instances, in Incus-shaped types, with no knowledge of HTTP auth.
//!
//! One small trait per resource, each in its own module here (`instances`,
//! `snapshots`, `storage`...) and implemented in the file of the same name
//! of each backend (`embedded/instances.rs`, `incus/instances.rs`...);
//! `Backend` is their sum.

mod backups;
pub mod embedded;
pub mod events;
mod exec;
mod files;
mod images;
pub mod incus;
mod instances;
mod networks;
mod operations;
mod profiles;
mod projects;
mod snapshots;
mod storage;
mod system;
pub mod types;

pub use backups::Backups;
pub use events::Events;
pub use exec::Exec;
pub use files::Files;
pub use images::Images;
pub use instances::Instances;
pub use networks::Networks;
pub use operations::Operations;
pub use profiles::Profiles;
pub use projects::Projects;
pub use snapshots::Snapshots;
pub use storage::Storage;
pub use system::System;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;

/// One driver a backend uses (LXC, QEMU, Incus) and whether it works here.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DriverInfo {
    /// `lxc`, `qemu` or `incus`.
    #[schema(example = "lxc")]
    pub name: String,
    /// What the driver runs: `container` or `virtual-machine`.
    #[schema(example = "container")]
    pub instance_type: String,
    pub available: bool,
    /// The driver's own version string, when it could be read.
    #[schema(example = "5.0.2")]
    pub version: Option<String>,
    /// Why the driver is unavailable, or a note on how it runs (e.g. `tcg`).
    pub detail: Option<String>,
}

/// `GET /api/v1/system/info`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemInfo {
    /// `embedded` or `incus`.
    #[schema(example = "embedded")]
    pub backend: String,
    /// lxgate's own version.
    #[schema(example = "0.1.0")]
    pub version: String,
    /// The API version (the path prefix).
    #[schema(example = "v1")]
    pub api_version: String,
    /// The version of the server behind lxgate (Incus's, or the host kernel's for embedded).
    pub server_version: Option<String>,
    pub drivers: Vec<DriverInfo>,
    /// Feature flags a dashboard can use to show or hide actions.
    pub features: BTreeMap<String, bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("the backend is unavailable: {0}")]
    Unavailable(String),
    #[error("the backend did not answer in time: {0}")]
    Timeout(String),
    #[error("the backend refused lxgate's credentials: {0}")]
    Forbidden(String),
    /// The backend's own restrictions refused the change (a restricted Incus
    /// project): what the instance policy would refuse, said by the backend.
    #[error("{0}")]
    Restricted(String),
    #[error("TLS with the backend failed: {0}")]
    TlsFailure(String),
    /// An image over `MAX_IMAGE_BYTES` (see `image_too_large`).
    #[error("{0}")]
    ImageTooLarge(String),
    /// The backend answered with an error that has no closer meaning (its message is kept).
    #[error("{0}")]
    Upstream(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NotFound(m) => ApiError::not_found("not_found", m),
            BackendError::Conflict(m) => ApiError::conflict("conflict", m),
            BackendError::PreconditionFailed(m) => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", m)
            }
            BackendError::BadRequest(m) => ApiError::bad_request("bad_request", m),
            BackendError::Restricted(m) => ApiError::forbidden(
                "policy_denied",
                format!("refused by the project's restrictions in the backend: {m}; an admin can allow it for this project (project config `user.lxgate.allow.config` / `user.lxgate.allow.devices`)"),
            ),
            BackendError::NotSupported(m) => ApiError::not_implemented(m),
            BackendError::Unavailable(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend_unavailable",
                "the backend is unavailable; try again shortly",
            )
            .with_source(anyhow::anyhow!(m)),
            BackendError::Timeout(m) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "backend_timeout",
                "the backend did not answer in time",
            )
            .with_source(anyhow::anyhow!(m)),
            BackendError::Forbidden(m) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "backend_forbidden",
                "the backend refused lxgate's credentials",
            )
            .with_source(anyhow::anyhow!(m)),
            BackendError::TlsFailure(m) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "backend_tls_failure",
                "the TLS connection to the backend failed (untrusted server certificate or protocol mismatch)",
            )
            .with_source(anyhow::anyhow!(m)),
            BackendError::ImageTooLarge(m) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "image_too_large", m)
            }
            BackendError::Upstream(m) => ApiError::new(StatusCode::BAD_GATEWAY, "backend_error", m),
            BackendError::Internal(e) => ApiError::internal(e),
        }
    }
}

/// Refuses an image over `MAX_IMAGE_BYTES` (`max`): `what` names what is
/// too large (the upload, a download, the unpacked image, a disk's virtual
/// size), and the message names the setting and its value.
pub fn image_too_large(what: &str, max: u64) -> BackendError {
    BackendError::ImageTooLarge(format!(
        "{what} is larger than MAX_IMAGE_BYTES allows ({})",
        human_bytes(max)
    ))
}

/// `n` bytes the way a person writes them: `8 GiB`, `64 MiB`, `1000 bytes`.
pub fn human_bytes(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// A list as names (`expand=false`, Incus recursion 0) or full objects.
#[derive(Debug)]
pub enum Listing<T> {
    Names(Vec<String>),
    Full(Vec<T>),
}

impl<T> Listing<T> {
    /// The list entries an endpoint returns: `full` for each object, `name`
    /// for each name.
    pub fn into_entries<E>(self, full: impl Fn(T) -> E, name: impl Fn(String) -> E) -> Vec<E> {
        match self {
            Listing::Names(names) => names.into_iter().map(name).collect(),
            Listing::Full(items) => items.into_iter().map(full).collect(),
        }
    }
}

/// Which instances a list covers.
#[derive(Debug, Clone, Copy)]
pub struct ListScope<'a> {
    /// `None` = every project (admins only; the API layer checks).
    pub project: Option<&'a crate::names::ProjectName>,
    /// Incus filter expression, passed through.
    pub filter: Option<&'a str>,
    pub expand: bool,
}

/// What every backend implements: the sum of the resource traits, each
/// implemented in that resource's file of each backend. Object-safe: the app
/// holds `Arc<dyn Backend>`. What a driver cannot do on this host, it says
/// itself (`BackendError::NotSupported`: 501 with the reason).
pub trait Backend:
    System
    + Instances
    + Exec
    + Files
    + Snapshots
    + Backups
    + Images
    + Storage
    + Networks
    + Projects
    + Profiles
    + Operations
    + Events
{
}

impl<T> Backend for T where
    T: System
        + Instances
        + Exec
        + Files
        + Snapshots
        + Backups
        + Images
        + Storage
        + Networks
        + Projects
        + Profiles
        + Operations
        + Events
{
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refusals_name_the_setting_in_round_units() {
        assert_eq!(human_bytes(8 << 30), "8 GiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(3 << 40), "3 TiB");
        assert_eq!(human_bytes(1536), "1536 bytes");
        assert_eq!(human_bytes(0), "0 bytes");
        let e: ApiError = image_too_large("the upload", 64 << 20).into();
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
