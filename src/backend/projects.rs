//! Projects: the unit of isolation (and of permissions in lxgate).

use super::BackendError;
use super::types::{ConfigMap, Project, ProjectCreate, ProjectState, ProjectUpdate};
use crate::names::ProjectName;

#[async_trait::async_trait]
pub trait Projects: Send + Sync {
    async fn list_projects(&self) -> Result<Vec<Project>, BackendError>;

    /// The project and its ETag.
    async fn get_project(
        &self,
        name: &ProjectName,
    ) -> Result<(Project, Option<String>), BackendError>;

    async fn create_project(&self, req: &ProjectCreate) -> Result<(), BackendError>;

    /// `replace`: PUT rather than PATCH.
    async fn update_project(
        &self,
        name: &ProjectName,
        update: &ProjectUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError>;

    async fn delete_project(&self, name: &ProjectName) -> Result<(), BackendError>;

    async fn project_state(&self, name: &ProjectName) -> Result<ProjectState, BackendError>;

    /// The project config that makes the backend itself refuse what the
    /// instance policy (`crate::policy`) refuses non-admins in a project
    /// with `widening`: defence in depth, should a check in lxgate ever be
    /// missed. `None`: the backend has no such setting (the embedded
    /// backend enforces the policy in lxgate and confines containers
    /// itself).
    fn project_restrictions(&self, widening: &crate::policy::Widening) -> Option<ConfigMap>;
}
