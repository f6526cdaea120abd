//! `/1.0/networks` on Incus.

use reqwest::Method;
use serde_json::json;

use super::IncusBackend;
use super::storage::{everything, from_kept, listing};
use crate::backend::types::{Network, NetworkCreate, NetworkLease, NetworkState, NetworkUpdate};
use crate::backend::{BackendError, Listing, Missing, Networks, ReportMissing};
use crate::names::{NetworkName, ProjectName};

#[async_trait::async_trait]
impl Networks for IncusBackend {
    async fn list_networks(
        &self,
        project: &ProjectName,
        expand: bool,
    ) -> Result<Listing<Network>, BackendError> {
        let in_project = [("project", project.as_str())];
        let all = everything(self, &["networks"], &in_project);
        if let Some(kept) = self.lists.networks(project, all).await {
            return Ok(from_kept(&kept?, expand, |n| &n.name));
        }
        let q = [
            ("recursion", if expand { "1" } else { "0" }),
            ("project", project),
        ];
        listing(self, &["networks"], &q, expand).await
    }

    async fn get_network(
        &self,
        project: &ProjectName,
        name: &NetworkName,
    ) -> Result<(Network, Option<String>), BackendError> {
        self.client
            .query_struct(&["networks", name.as_str()], &[("project", project)])
            .await
            .missing(|| Missing::network(name))
    }

    async fn create_network(
        &self,
        project: &ProjectName,
        req: &NetworkCreate,
    ) -> Result<(), BackendError> {
        let body = json!({
            "name": req.name,
            "type": req.network_type.as_deref().unwrap_or("bridge"),
            "description": req.description,
            "config": req.config,
        });
        self.client
            .query(
                Method::POST,
                &["networks"],
                &[("project", project)],
                Some(&body),
                None,
            )
            .await
            .map(|_| ())
    }

    async fn update_network(
        &self,
        project: &ProjectName,
        name: &NetworkName,
        update: &NetworkUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError> {
        let body = serde_json::to_value(update).map_err(anyhow::Error::from)?;
        let method = if replace { Method::PUT } else { Method::PATCH };
        self.client
            .query(
                method,
                &["networks", name.as_str()],
                &[("project", project)],
                Some(&body),
                if_match,
            )
            .await
            .missing(|| Missing::network(name))
            .map(|_| ())
    }

    async fn delete_network(
        &self,
        project: &ProjectName,
        name: &NetworkName,
    ) -> Result<(), BackendError> {
        self.client
            .query(
                Method::DELETE,
                &["networks", name.as_str()],
                &[("project", project)],
                None,
                None,
            )
            .await
            .missing(|| Missing::network(name))
            .map(|_| ())
    }

    async fn network_state(
        &self,
        project: &ProjectName,
        name: &NetworkName,
    ) -> Result<NetworkState, BackendError> {
        self.client
            .query_struct(
                &["networks", name.as_str(), "state"],
                &[("project", project)],
            )
            .await
            .missing(|| Missing::network(name))
            .map(|(s, _)| s)
    }

    async fn network_leases(
        &self,
        project: &ProjectName,
        name: &NetworkName,
    ) -> Result<Vec<NetworkLease>, BackendError> {
        let (leases, _): (Option<Vec<NetworkLease>>, _) = self
            .client
            .query_struct(
                &["networks", name.as_str(), "leases"],
                &[("project", project)],
            )
            .await
            .missing(|| Missing::ManagedNetwork {
                name: name.to_string(),
            })?;
        Ok(leases.unwrap_or_default())
    }
}
