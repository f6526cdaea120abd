//! `/1.0/instances/{name}/snapshots` on Incus, and restoring one.

use reqwest::Method;
use serde_json::json;

use super::IncusBackend;
use super::files::project_query;
use super::instances::last_segment;
use crate::backend::types::{Operation, Snapshot, SnapshotCreate};
use crate::backend::{BackendError, Listing, Missing, ReportMissing, Snapshots};
use crate::names::{InstanceName, ProjectName, SnapshotName};

#[async_trait::async_trait]
impl Snapshots for IncusBackend {
    async fn list_snapshots(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        expand: bool,
    ) -> Result<Listing<Snapshot>, BackendError> {
        let q = [
            ("project", project.as_str()),
            ("recursion", if expand { "1" } else { "0" }),
        ];
        let segments = ["instances", instance, "snapshots"];
        if expand {
            let (items, _): (Vec<Snapshot>, _) = self
                .client
                .query_struct(&segments, &q)
                .await
                .missing(|| Missing::instance(instance))?;
            Ok(Listing::Full(items))
        } else {
            let (urls, _): (Vec<String>, _) = self
                .client
                .query_struct(&segments, &q)
                .await
                .missing(|| Missing::instance(instance))?;
            Ok(Listing::Names(
                urls.iter().map(|u| last_segment(u)).collect(),
            ))
        }
    }

    async fn get_snapshot(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        snap: &SnapshotName,
    ) -> Result<Snapshot, BackendError> {
        self.client
            .query_struct(
                &["instances", instance, "snapshots", snap],
                &project_query(project),
            )
            .await
            .missing(|| Missing::snapshot(instance, snap))
            .map(|(s, _)| s)
    }

    async fn create_snapshot(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        req: &SnapshotCreate,
    ) -> Result<Operation, BackendError> {
        let body = serde_json::to_value(req).map_err(anyhow::Error::from)?;
        self.client
            .query_operation(
                Method::POST,
                &["instances", instance, "snapshots"],
                &project_query(project),
                Some(&body),
                None,
            )
            .await
            .missing(|| Missing::instance(instance))
    }

    async fn delete_snapshot(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        snap: &SnapshotName,
    ) -> Result<Operation, BackendError> {
        self.client
            .query_operation(
                Method::DELETE,
                &["instances", instance, "snapshots", snap],
                &project_query(project),
                None,
                None,
            )
            .await
            .missing(|| Missing::snapshot(instance, snap))
    }

    /// Incus restores through the instance itself: `PUT /1.0/instances/{name}`
    /// with `restore` set (the rest of the body is then ignored).
    async fn restore_snapshot(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        snap: &SnapshotName,
        stateful: bool,
    ) -> Result<Operation, BackendError> {
        // Incus answers a restore of a missing snapshot with a failed
        // operation; look first so the caller gets a 404 instead.
        self.get_snapshot(project, instance, snap).await?;
        let body = json!({"restore": snap, "stateful": stateful});
        self.client
            .query_operation(
                Method::PUT,
                &["instances", instance],
                &project_query(project),
                Some(&body),
                None,
            )
            .await
            .missing(|| Missing::snapshot(instance, snap))
    }
}
