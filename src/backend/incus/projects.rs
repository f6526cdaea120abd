//! `/1.0/projects` on Incus.

use reqwest::Method;

use super::IncusBackend;
use crate::backend::BackendError;
use crate::backend::types::{Project, ProjectCreate, ProjectState, ProjectUpdate};

impl IncusBackend {
    pub(super) async fn list_projects_impl(&self) -> Result<Vec<Project>, BackendError> {
        let (items, _): (Option<Vec<Project>>, _) = self
            .client
            .query_struct(&["projects"], &[("recursion", "1")])
            .await?;
        Ok(items.unwrap_or_default())
    }

    pub(super) async fn get_project_impl(
        &self,
        name: &str,
    ) -> Result<(Project, Option<String>), BackendError> {
        self.client.query_struct(&["projects", name], &[]).await
    }

    pub(super) async fn create_project_impl(
        &self,
        req: &ProjectCreate,
    ) -> Result<(), BackendError> {
        let body = serde_json::to_value(req).map_err(anyhow::Error::from)?;
        self.client
            .query(Method::POST, &["projects"], &[], Some(&body), None)
            .await
            .map(|_| ())
    }

    pub(super) async fn update_project_impl(
        &self,
        name: &str,
        update: &ProjectUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError> {
        let body = serde_json::to_value(update).map_err(anyhow::Error::from)?;
        let method = if replace { Method::PUT } else { Method::PATCH };
        self.client
            .query(method, &["projects", name], &[], Some(&body), if_match)
            .await
            .map(|_| ())
    }

    pub(super) async fn delete_project_impl(&self, name: &str) -> Result<(), BackendError> {
        self.client
            .query(Method::DELETE, &["projects", name], &[], None, None)
            .await
            .map(|_| ())
    }

    pub(super) async fn project_state_impl(
        &self,
        name: &str,
    ) -> Result<ProjectState, BackendError> {
        self.client
            .query_struct(&["projects", name, "state"], &[])
            .await
            .map(|(s, _)| s)
    }
}
