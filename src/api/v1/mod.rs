//! `/api/v1`: one module per resource.

pub mod audit;
pub mod auth;
pub mod instances;
pub mod operations;
pub mod system;
pub mod users;

use crate::error::{ApiError, ApiResult};
use crate::names::ProjectName;

/// `?project=`: validated, `default` when absent (as in Incus).
pub fn project_param(p: Option<&str>) -> ApiResult<ProjectName> {
    match p {
        None | Some("") => Ok(ProjectName::default()),
        Some(p) => ProjectName::parse(p).map_err(|e| ApiError::bad_request("invalid_name", e)),
    }
}
