//! `/api/v1`: one module per resource.

pub mod audit;
pub mod auth;
pub mod backups;
pub mod events;
pub mod exec;
pub mod images;
pub mod instance_files;
pub mod instances;
pub mod networks;
pub mod operations;
pub mod projects;
pub mod snapshots;
pub mod storage;
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
