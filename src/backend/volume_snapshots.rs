//! Snapshots of custom storage volumes: point-in-time copies of a volume's
//! content (and its config at the time) that the volume can be put back to
//! or copied from.

use super::types::{Operation, StorageVolumeSnapshot, StorageVolumeSnapshotCreate};
use super::{BackendError, Listing};
use crate::names::{PoolName, ProjectName, SnapshotName, VolumeName};

#[async_trait::async_trait]
pub trait VolumeSnapshots: Send + Sync {
    async fn list_volume_snapshots(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        expand: bool,
    ) -> Result<Listing<StorageVolumeSnapshot>, BackendError>;

    async fn get_volume_snapshot(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        snap: &SnapshotName,
    ) -> Result<StorageVolumeSnapshot, BackendError>;

    async fn create_volume_snapshot(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        req: &StorageVolumeSnapshotCreate,
    ) -> Result<Operation, BackendError>;

    async fn delete_volume_snapshot(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        snap: &SnapshotName,
    ) -> Result<Operation, BackendError>;

    /// Puts the volume's content back to the snapshot's (its config stays,
    /// as in Incus). A volume in use by a running instance is refused
    /// (`Conflict`). Returns the operation when the backend restores in the
    /// background (Incus answers at once).
    async fn restore_volume_snapshot(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        snap: &SnapshotName,
    ) -> Result<Option<Operation>, BackendError>;
}
