//! Instance backups: tarballs of an instance that can be downloaded.

use super::types::{Backup, BackupCreate, Download, Operation};
use super::{BackendError, Listing};
use crate::names::{BackupName, InstanceName, ProjectName};

#[async_trait::async_trait]
pub trait Backups: Send + Sync {
    async fn list_backups(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        expand: bool,
    ) -> Result<Listing<Backup>, BackendError>;

    async fn get_backup(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        backup: &BackupName,
    ) -> Result<Backup, BackendError>;

    async fn create_backup(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        req: &BackupCreate,
    ) -> Result<Operation, BackendError>;

    async fn delete_backup(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        backup: &BackupName,
    ) -> Result<Operation, BackendError>;

    /// The backup tarball, streamed.
    async fn export_backup(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        backup: &BackupName,
    ) -> Result<Download, BackendError>;
}
