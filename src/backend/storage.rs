//! Storage pools (server-wide) and the custom volumes of a project in them.

use super::types::{
    Operation, StoragePool, StoragePoolCreate, StoragePoolUpdate, StorageVolume,
    StorageVolumeCreate, StorageVolumeUpdate, VolumeCopy,
};
use super::{BackendError, Listing};
use crate::names::{MemberName, PoolName, ProjectName, VolumeName};

#[async_trait::async_trait]
pub trait Storage: Send + Sync {
    async fn list_storage_pools(&self, expand: bool) -> Result<Listing<StoragePool>, BackendError>;

    /// The pool and its ETag.
    async fn get_storage_pool(
        &self,
        pool: &PoolName,
    ) -> Result<(StoragePool, Option<String>), BackendError>;

    async fn create_storage_pool(&self, req: &StoragePoolCreate) -> Result<(), BackendError>;

    /// `replace`: PUT rather than PATCH.
    async fn update_storage_pool(
        &self,
        pool: &PoolName,
        update: &StoragePoolUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError>;

    async fn delete_storage_pool(&self, pool: &PoolName) -> Result<(), BackendError>;

    /// Custom volumes of `project` in `pool`.
    async fn list_volumes(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        expand: bool,
    ) -> Result<Listing<StorageVolume>, BackendError>;

    /// A custom volume and its ETag.
    async fn get_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        name: &VolumeName,
    ) -> Result<(StorageVolume, Option<String>), BackendError>;

    /// A new, empty volume (`req.source` is not read: copies go through
    /// `copy_volume`). Returns the operation when the backend creates it in
    /// the background. `target`: the cluster member to create it on (for a
    /// pool each member has its own of), as for `create_instance`.
    async fn create_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        req: &StorageVolumeCreate,
        target: Option<&MemberName>,
    ) -> Result<Option<Operation>, BackendError>;

    /// PATCH semantics: only the given fields change.
    async fn update_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        name: &VolumeName,
        update: &StorageVolumeUpdate,
        if_match: Option<&str>,
    ) -> Result<(), BackendError>;

    /// Returns the operation when the backend deletes it in the background.
    async fn delete_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        name: &VolumeName,
    ) -> Result<Option<Operation>, BackendError>;

    /// A new volume in `pool` holding a copy of another volume of the
    /// project, or of one of its snapshots (within or across pools), with
    /// the content type of its source and no snapshots.
    async fn copy_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        req: &VolumeCopy,
        target: Option<&MemberName>,
    ) -> Result<Operation, BackendError>;
}
