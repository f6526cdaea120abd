//! Instance snapshots: point-in-time copies an instance can be put back to.

use super::types::{Operation, Snapshot, SnapshotCreate};
use super::{BackendError, Listing};
use crate::names::{InstanceName, ProjectName, SnapshotName};

#[async_trait::async_trait]
pub trait Snapshots: Send + Sync {
    async fn list_snapshots(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        expand: bool,
    ) -> Result<Listing<Snapshot>, BackendError>;

    async fn get_snapshot(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        snap: &SnapshotName,
    ) -> Result<Snapshot, BackendError>;

    async fn create_snapshot(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        req: &SnapshotCreate,
    ) -> Result<Operation, BackendError>;

    async fn delete_snapshot(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        snap: &SnapshotName,
    ) -> Result<Operation, BackendError>;

    /// Puts the instance back to the snapshot (`stateful`: with its memory).
    async fn restore_snapshot(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        snap: &SnapshotName,
        stateful: bool,
    ) -> Result<Operation, BackendError>;
}
