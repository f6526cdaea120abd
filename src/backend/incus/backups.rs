//! `/1.0/instances/{name}/backups` on Incus; exports are streamed.

use reqwest::Method;
use reqwest::header::HeaderMap;

use super::IncusBackend;
use super::files::{TRANSFER_TIMEOUT, download, project_query};
use super::instances::last_segment;
use crate::backend::types::{Backup, BackupCreate, Download, Operation};
use crate::backend::{BackendError, Backups, Listing, Missing, ReportMissing};
use crate::names::{BackupName, InstanceName, ProjectName};

#[async_trait::async_trait]
impl Backups for IncusBackend {
    async fn list_backups(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        expand: bool,
    ) -> Result<Listing<Backup>, BackendError> {
        let q = [
            ("project", project.as_str()),
            ("recursion", if expand { "1" } else { "0" }),
        ];
        let segments = ["instances", instance, "backups"];
        if expand {
            let (items, _): (Vec<Backup>, _) = self
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

    async fn get_backup(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        backup: &BackupName,
    ) -> Result<Backup, BackendError> {
        self.client
            .query_struct(
                &["instances", instance, "backups", backup],
                &project_query(project),
            )
            .await
            .missing(|| Missing::backup(instance, backup))
            .map(|(b, _)| b)
    }

    async fn create_backup(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        req: &BackupCreate,
    ) -> Result<Operation, BackendError> {
        let body = serde_json::to_value(req).map_err(anyhow::Error::from)?;
        self.client
            .query_operation(
                Method::POST,
                &["instances", instance, "backups"],
                &project_query(project),
                Some(&body),
                None,
            )
            .await
            .missing(|| Missing::instance(instance))
    }

    async fn delete_backup(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        backup: &BackupName,
    ) -> Result<Operation, BackendError> {
        self.client
            .query_operation(
                Method::DELETE,
                &["instances", instance, "backups", backup],
                &project_query(project),
                None,
                None,
            )
            .await
            .missing(|| Missing::backup(instance, backup))
    }

    async fn export_backup(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        backup: &BackupName,
    ) -> Result<Download, BackendError> {
        let resp = self
            .client
            .raw_stream(
                Method::GET,
                &["instances", instance, "backups", backup, "export"],
                &project_query(project),
                HeaderMap::new(),
                None,
                TRANSFER_TIMEOUT,
            )
            .await
            .missing(|| Missing::backup(instance, backup))?;
        Ok(download(resp))
    }
}
