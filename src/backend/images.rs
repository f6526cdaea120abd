//! Images instances are created from, and their aliases.

use super::types::{
    Download, Image, ImageAliasCreate, ImageAliasesEntry, ImageCopy, ImagePublish, ImageUpload,
    Operation, PublishFrom,
};
use super::{BackendError, ListScope, Listing};
use crate::names::{ImageAliasName, ImageFingerprint, ProjectName};

#[async_trait::async_trait]
pub trait Images: Send + Sync {
    /// Images of `scope.project` (every project when `None`); names are fingerprints.
    async fn list_images(&self, scope: ListScope<'_>) -> Result<Listing<Image>, BackendError>;

    /// The image (by fingerprint or unique prefix) and its ETag.
    async fn get_image(
        &self,
        project: &ProjectName,
        fingerprint: &ImageFingerprint,
    ) -> Result<(Image, Option<String>), BackendError>;

    async fn delete_image(
        &self,
        project: &ProjectName,
        fingerprint: &ImageFingerprint,
    ) -> Result<Operation, BackendError>;

    /// Copies an image from a remote image server into `project`.
    async fn copy_image(
        &self,
        project: &ProjectName,
        req: &ImageCopy,
    ) -> Result<Operation, BackendError>;

    /// Adds an uploaded image (already spooled to local files) to `project`.
    /// The files may be removed once this returns.
    async fn import_image(
        &self,
        project: &ProjectName,
        upload: &ImageUpload,
    ) -> Result<Operation, BackendError>;

    /// Packs an instance (stopped) or a snapshot of one into a new image of
    /// `project`, with `req`'s aliases and properties.
    async fn publish_image(
        &self,
        project: &ProjectName,
        from: &PublishFrom,
        req: &ImagePublish,
    ) -> Result<Operation, BackendError>;

    /// The image's files, streamed: `multipart/form-data` with a `metadata`
    /// and a `rootfs` part for a split image (what `POST images/import`
    /// takes back), the tarball alone for a unified one.
    async fn export_image(
        &self,
        project: &ProjectName,
        fingerprint: &ImageFingerprint,
    ) -> Result<Download, BackendError>;

    async fn list_image_aliases(
        &self,
        project: &ProjectName,
        expand: bool,
    ) -> Result<Listing<ImageAliasesEntry>, BackendError>;

    async fn get_image_alias(
        &self,
        project: &ProjectName,
        name: &ImageAliasName,
    ) -> Result<ImageAliasesEntry, BackendError>;

    async fn create_image_alias(
        &self,
        project: &ProjectName,
        req: &ImageAliasCreate,
    ) -> Result<(), BackendError>;

    async fn delete_image_alias(
        &self,
        project: &ProjectName,
        name: &ImageAliasName,
    ) -> Result<(), BackendError>;
}
