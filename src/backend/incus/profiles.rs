//! `/1.0/profiles` on Incus. Incus applies profiles to instances itself.

use reqwest::Method;
use serde_json::json;

use super::IncusBackend;
use super::storage::{everything, from_kept, listing};
use crate::backend::types::{Profile, ProfileCreate, ProfileUpdate};
use crate::backend::{BackendError, Listing, Missing, Profiles, ReportMissing};
use crate::names::{ProfileName, ProjectName};

fn missing(name: &ProfileName) -> impl FnOnce() -> Missing + '_ {
    || Missing::Profile {
        name: name.to_string(),
    }
}

#[async_trait::async_trait]
impl Profiles for IncusBackend {
    async fn list_profiles(
        &self,
        project: &ProjectName,
        expand: bool,
    ) -> Result<Listing<Profile>, BackendError> {
        let in_project = [("project", project.as_str())];
        let all = everything(self, &["profiles"], &in_project);
        if let Some(kept) = self.lists.profiles(project, all).await {
            return Ok(from_kept(&kept?, expand, |p| &p.name));
        }
        let q = [
            ("recursion", if expand { "1" } else { "0" }),
            ("project", project),
        ];
        listing(self, &["profiles"], &q, expand).await
    }

    async fn get_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
    ) -> Result<(Profile, Option<String>), BackendError> {
        self.client
            .query_struct(&["profiles", name], &[("project", project)])
            .await
            .missing(missing(name))
    }

    async fn create_profile(
        &self,
        project: &ProjectName,
        req: &ProfileCreate,
    ) -> Result<(), BackendError> {
        let body = serde_json::to_value(req).map_err(anyhow::Error::from)?;
        self.client
            .query(
                Method::POST,
                &["profiles"],
                &[("project", project)],
                Some(&body),
                None,
            )
            .await
            .map(|_| ())
    }

    async fn update_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
        update: &ProfileUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError> {
        let body = serde_json::to_value(update).map_err(anyhow::Error::from)?;
        let method = if replace { Method::PUT } else { Method::PATCH };
        self.client
            .query(
                method,
                &["profiles", name],
                &[("project", project)],
                Some(&body),
                if_match,
            )
            .await
            .missing(missing(name))
            .map(|_| ())
    }

    async fn delete_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
    ) -> Result<(), BackendError> {
        self.client
            .query(
                Method::DELETE,
                &["profiles", name],
                &[("project", project)],
                None,
                None,
            )
            .await
            .missing(missing(name))
            .map(|_| ())
    }

    async fn rename_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
        new_name: &ProfileName,
    ) -> Result<(), BackendError> {
        let body = json!({"name": new_name.as_str()});
        self.client
            .query(
                Method::POST,
                &["profiles", name],
                &[("project", project)],
                Some(&body),
                None,
            )
            .await
            .missing(missing(name))
            .map(|_| ())
    }
}
