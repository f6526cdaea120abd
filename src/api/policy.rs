//! The instance policy (`crate::policy`) as handlers apply it: who the rules
//! are for (global admins are unrestricted) and what the project widened.
//!
//! Every handler that writes instance config or devices, or a volume's
//! config, calls [`for_caller`] and checks its change before the backend
//! sees it.

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::backend::BackendError;
use crate::backend::types::{ConfigMap, Project, ProjectPolicy};
use crate::error::{ApiError, ApiResult};
use crate::names::ProjectName;
use crate::policy::{Policy, Widening};

/// The policy for `user` writing into `project`.
pub async fn for_caller(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
) -> ApiResult<Policy> {
    if user.is_admin() {
        return Ok(Policy::admin());
    }
    let (p, _) = state
        .backend
        .get_project(project.as_str())
        .await
        .map_err(|e| match e {
            BackendError::NotFound(_) => ApiError::not_found(
                "project_not_found",
                format!("project `{project}` does not exist"),
            ),
            other => other.into(),
        })?;
    // An allow list an admin wrote straight into the backend with a typo
    // must not widen anything: fall back to the narrow default.
    let widening = Widening::from_project_config(&p.config).unwrap_or_else(|e| {
        tracing::warn!(project = %project, error = ?e, "ignoring an invalid policy allow list");
        Widening::default()
    });
    Ok(Policy::restricted(widening))
}

/// Fills in `project.policy`: the allow lists, and whether the backend
/// enforces the policy too.
pub fn describe(state: &AppState, mut project: Project) -> Project {
    let widening = Widening::from_project_config(&project.config).unwrap_or_default();
    project.policy = ProjectPolicy {
        restricted: state.backend.project_restrictions(&widening).is_some()
            && project.config.get("restricted").map(String::as_str) == Some("true"),
        allow_config: widening.config_patterns(),
        allow_devices: widening.device_types(),
    };
    project
}

/// The allow lists in a project config an admin is about to write: 400 on a
/// malformed entry (before anything reaches the backend).
pub fn widening_of(config: &ConfigMap) -> ApiResult<Widening> {
    Widening::from_project_config(config).map_err(ApiError::from)
}

/// Adds the backend's restriction keys for `widening` to `config`, leaving
/// the keys an admin gave explicitly alone. Nothing when the backend has no
/// restrictions, or when the admin asked for `restricted=false`.
pub fn add_restrictions(state: &AppState, widening: &Widening, config: &mut ConfigMap) {
    if config.get("restricted").map(String::as_str) == Some("false") {
        return;
    }
    if let Some(keys) = state.backend.project_restrictions(widening) {
        for (k, v) in keys {
            config.entry(k).or_insert(v);
        }
    }
}
