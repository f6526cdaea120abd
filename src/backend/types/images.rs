//! Images and image aliases, shaped as Incus's `/1.0/images` (see
//! `Image`, `ImageAliasesEntry`, `ImagesPost` in Incus's API definitions).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An alias as listed inside an image.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ImageAlias {
    #[schema(example = "busybox")]
    pub name: String,
    pub description: String,
}

/// Where an image was downloaded from (for auto-update).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ImageSource {
    #[schema(example = "debian/12")]
    pub alias: String,
    pub certificate: String,
    /// `simplestreams` or `incus`.
    #[schema(example = "simplestreams")]
    pub protocol: String,
    #[schema(example = "https://images.linuxcontainers.org")]
    pub server: String,
    /// `container` or `virtual-machine`.
    pub image_type: String,
}

/// An image in the image store.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Image {
    /// Full SHA-256 fingerprint.
    #[schema(example = "06b86454720d36b20f94e31c6812e05ec51c1b568cf3a8abd273769d213394bb")]
    pub fingerprint: String,
    pub aliases: Vec<ImageAlias>,
    #[schema(example = "x86_64")]
    pub architecture: String,
    pub auto_update: bool,
    /// Whether the image is an automatically cached remote image.
    pub cached: bool,
    pub created_at: String,
    pub expires_at: String,
    pub last_used_at: String,
    pub uploaded_at: String,
    /// Original file name.
    pub filename: String,
    pub locations: Vec<String>,
    pub profiles: Vec<String>,
    #[schema(example = "default")]
    pub project: String,
    /// Descriptive properties (`os`, `release`, `description`...).
    pub properties: BTreeMap<String, String>,
    /// Whether the image is available to unauthenticated users of the server.
    pub public: bool,
    /// Bytes.
    pub size: i64,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type")]
    #[schema(example = "container")]
    pub image_type: String,
    pub update_source: Option<ImageSource>,
}

/// An image alias.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ImageAliasesEntry {
    #[schema(example = "busybox")]
    pub name: String,
    pub description: String,
    /// The fingerprint the alias points to.
    pub target: String,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type")]
    pub alias_type: String,
}

/// `POST /api/v1/images/aliases`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageAliasCreate {
    #[schema(value_type = crate::names::ImageAliasName, example = "my-image")]
    pub name: String,
    /// Fingerprint (or a unique prefix of one) of an image in the project.
    #[schema(value_type = crate::names::ImageFingerprint, example = "06b86454720d")]
    pub target: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// An alias to give a copied image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewImageAlias {
    #[schema(value_type = crate::names::ImageAliasName, example = "debian-12")]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// The remote server a copy comes from.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageCopySource {
    /// `https://` URL of the image server, resolving to public addresses
    /// (plain `http://` and non-public addresses only for servers on
    /// `IMAGE_SERVER_ALLOWLIST`).
    #[schema(
        example = "https://images.linuxcontainers.org",
        max_length = 2048,
        pattern = "^https://"
    )]
    pub server: String,
    /// `simplestreams` or `incus`.
    #[schema(value_type = super::schema::ImageServerProtocol, example = "simplestreams")]
    pub protocol: String,
    /// The image's alias on the server (give this or `fingerprint`).
    #[serde(default)]
    #[schema(example = "debian/12")]
    pub alias: Option<String>,
    /// The image's fingerprint on the server (give this or `alias`).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// `container` or `virtual-machine`, when the alias names both.
    #[serde(default)]
    pub image_type: Option<String>,
}

/// `POST /api/v1/images`: copy an image from a remote image server.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageCopy {
    #[schema(value_type = crate::api::schemas::ImageCopySourceSchema)]
    pub source: ImageCopySource,
    /// Aliases to create for the copy in the target project.
    #[serde(default)]
    pub aliases: Vec<NewImageAlias>,
    /// Make the image available to unauthenticated users of the server.
    #[serde(default)]
    pub public: bool,
    /// Keep the image up to date from its source.
    #[serde(default)]
    pub auto_update: bool,
}

/// Where a published image comes from: `type` `instance` (`name` = the
/// instance) or `snapshot` (`name` = `instance/snap`), in `project`
/// (documented as `api::schemas::ImagePublishSourceSchema`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePublishSource {
    #[serde(rename = "type")]
    pub source_type: String,
    pub name: String,
    #[serde(default)]
    pub project: Option<String>,
}

/// `POST /api/v1/images` with `source.type` `instance` or `snapshot`:
/// publish an instance or a snapshot as an image of the project.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePublish {
    #[schema(value_type = crate::api::schemas::ImagePublishSourceSchema)]
    pub source: ImagePublishSource,
    /// Aliases for the new image.
    #[serde(default)]
    pub aliases: Vec<NewImageAlias>,
    /// Properties of the image (`os`, `release`, `description`...), merged
    /// over those of the image the instance was made from.
    #[serde(default)]
    #[schema(value_type = super::schema::ConfigMap)]
    pub properties: BTreeMap<String, String>,
    /// Make the image available to unauthenticated users of the server.
    #[serde(default)]
    pub public: bool,
}

/// What a publish reads, checked: the instance (and snapshot) in its project.
#[derive(Debug, Clone)]
pub struct PublishFrom {
    pub project: crate::names::ProjectName,
    pub instance: crate::names::InstanceName,
    pub snapshot: Option<crate::names::SnapshotName>,
}

/// An uploaded image spooled to local files, ready to hand to a backend
/// (`POST /api/v1/images/import`). Not part of the API's JSON.
#[derive(Debug, Clone)]
pub struct ImageUpload {
    /// The metadata tarball (holding `metadata.yaml`).
    pub metadata: PathBuf,
    pub metadata_size: u64,
    pub metadata_name: String,
    /// The rootfs tarball, or a qcow2 disk for a VM.
    pub rootfs: PathBuf,
    pub rootfs_size: u64,
    pub rootfs_name: String,
    /// The rootfs is a VM disk (qcow2) rather than a container tarball.
    pub virtual_machine: bool,
    /// SHA-256 of metadata followed by rootfs: the image's fingerprint.
    pub fingerprint: String,
    pub aliases: Vec<String>,
    pub public: bool,
}
