//! The backend boundary: what the API layer may ask of whatever runs the
//! instances, in Incus-shaped types, with no knowledge of HTTP auth.

pub mod embedded;
pub mod incus;
pub mod types;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use types::{Instance, InstanceCreate, InstanceState, InstanceUpdate, Operation, StateChange};

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
    #[error("TLS with the backend failed: {0}")]
    TlsFailure(String),
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
            BackendError::Upstream(m) => ApiError::new(StatusCode::BAD_GATEWAY, "backend_error", m),
            BackendError::Internal(e) => ApiError::internal(e),
        }
    }
}

/// A list as names (`expand=false`, Incus recursion 0) or full objects.
#[derive(Debug)]
pub enum Listing<T> {
    Names(Vec<String>),
    Full(Vec<T>),
}

/// Which instances a list covers.
#[derive(Debug, Clone, Copy)]
pub struct ListScope<'a> {
    /// `None` = every project (admins only; the API layer checks).
    pub project: Option<&'a str>,
    /// Incus filter expression, passed through.
    pub filter: Option<&'a str>,
    pub expand: bool,
}

fn unsupported<T>(what: &str) -> Result<T, BackendError> {
    Err(BackendError::NotSupported(format!(
        "{what} is not supported by this backend yet"
    )))
}

/// What every backend implements. Object-safe: the app holds `Arc<dyn Backend>`.
/// Methods a backend does not provide answer 501 `not_supported`.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// `embedded` or `incus`.
    fn kind(&self) -> &'static str;

    /// A cheap reachability check for `/health/ready`.
    async fn ping(&self) -> Result<(), BackendError>;

    /// Drivers, versions and features for `system/info`.
    async fn info(&self) -> Result<SystemInfo, BackendError>;

    async fn list_instances(
        &self,
        _scope: ListScope<'_>,
    ) -> Result<Listing<Instance>, BackendError> {
        unsupported("listing instances")
    }

    /// The instance and its ETag.
    async fn get_instance(
        &self,
        _project: &str,
        _name: &str,
    ) -> Result<(Instance, Option<String>), BackendError> {
        unsupported("reading instances")
    }

    async fn create_instance(
        &self,
        _project: &str,
        _req: &InstanceCreate,
    ) -> Result<Operation, BackendError> {
        unsupported("creating instances")
    }

    /// `replace`: PUT (full replacement) rather than PATCH. Returns the
    /// operation when the backend does the change in the background.
    async fn update_instance(
        &self,
        _project: &str,
        _name: &str,
        _update: &InstanceUpdate,
        _if_match: Option<&str>,
        _replace: bool,
    ) -> Result<Option<Operation>, BackendError> {
        unsupported("updating instances")
    }

    async fn delete_instance(
        &self,
        _project: &str,
        _name: &str,
    ) -> Result<Operation, BackendError> {
        unsupported("deleting instances")
    }

    async fn rename_instance(
        &self,
        _project: &str,
        _name: &str,
        _new_name: &str,
    ) -> Result<Operation, BackendError> {
        unsupported("renaming instances")
    }

    async fn instance_state(
        &self,
        _project: &str,
        _name: &str,
    ) -> Result<InstanceState, BackendError> {
        unsupported("reading instance state")
    }

    async fn change_state(
        &self,
        _project: &str,
        _name: &str,
        _change: &StateChange,
    ) -> Result<Operation, BackendError> {
        unsupported("changing instance state")
    }

    /// Operations in `project`, or in every project when `None`.
    async fn list_operations(
        &self,
        _project: Option<&str>,
    ) -> Result<Vec<Operation>, BackendError> {
        unsupported("listing operations")
    }

    async fn get_operation(&self, _id: &str) -> Result<Operation, BackendError> {
        unsupported("reading operations")
    }

    /// Waits up to `timeout_secs` and returns the operation, finished or not.
    async fn wait_operation(
        &self,
        _id: &str,
        _timeout_secs: u64,
    ) -> Result<Operation, BackendError> {
        unsupported("waiting for operations")
    }

    async fn cancel_operation(&self, _id: &str) -> Result<(), BackendError> {
        unsupported("cancelling operations")
    }
}
