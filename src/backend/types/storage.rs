//! Storage pools and custom storage volumes, shaped as Incus's
//! `/1.0/storage-pools` objects.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::ConfigMap;

/// Incus sends `null` for some empty lists and maps; read it as empty.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// A storage pool (server-wide).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct StoragePool {
    #[schema(example = "default")]
    pub name: String,
    pub description: String,
    /// `dir`, `btrfs`, `zfs`, `lvm`, `ceph`...
    #[schema(example = "dir")]
    pub driver: String,
    /// `Created`, `Pending`, `Errored` or `Unknown`.
    #[schema(example = "Created")]
    pub status: String,
    #[serde(deserialize_with = "null_as_default")]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
    /// `/1.0/...` URLs of what uses the pool (profiles, instances, volumes).
    #[serde(deserialize_with = "null_as_default")]
    pub used_by: Vec<String>,
    /// Cluster members the pool is defined on.
    #[serde(deserialize_with = "null_as_default")]
    pub locations: Vec<String>,
}

/// `POST /api/v1/storage/pools`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoragePoolCreate {
    #[schema(value_type = crate::names::PoolName, example = "fast")]
    pub name: String,
    /// The storage driver: `dir`, `btrfs`, `zfs`, `lvm`, `ceph`...
    #[schema(value_type = super::schema::StorageDriver, example = "dir")]
    pub driver: String,
    #[serde(default)]
    pub description: String,
    /// Driver settings, e.g. `{"source": "/srv/pool"}` for `dir`.
    #[serde(default)]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
}

/// `PUT /api/v1/storage/pools/{pool}` (full: left-out fields are emptied, as
/// in Incus) and `PATCH` (only the given fields; config keys are merged).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoragePoolUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::schema::ConfigMap>)]
    pub config: Option<ConfigMap>,
}

/// A storage volume. lxgate manages `custom` volumes; instance and image
/// volumes are the backend's own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct StorageVolume {
    #[schema(example = "data")]
    pub name: String,
    pub description: String,
    /// `custom`, `container`, `virtual-machine` or `image`.
    #[serde(rename = "type")]
    #[schema(example = "custom")]
    pub volume_type: String,
    /// `filesystem` or `block`.
    #[schema(example = "filesystem")]
    pub content_type: String,
    /// Settings such as `size` (`10GiB`).
    #[serde(deserialize_with = "null_as_default")]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
    /// `/1.0/...` URLs of the instances and profiles using the volume.
    #[serde(deserialize_with = "null_as_default")]
    pub used_by: Vec<String>,
    pub location: String,
    #[schema(example = "default")]
    pub project: String,
    pub created_at: String,
}

/// `POST /api/v1/storage/pools/{pool}/volumes`: a new custom volume, empty,
/// or with `source` a copy of another volume or of one of its snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageVolumeCreate {
    #[schema(value_type = crate::names::VolumeName, example = "data")]
    pub name: String,
    /// `filesystem` (default) or `block` (block volumes attach to VMs only).
    /// A copy has its source's: leave it out (or give that one).
    #[serde(default)]
    #[schema(value_type = Option<super::schema::VolumeContentType>, example = "filesystem")]
    pub content_type: Option<String>,
    #[serde(default)]
    pub description: String,
    /// Settings such as `{"size": "10GiB"}`. A copy given none takes its
    /// source's (as Incus does).
    #[serde(default)]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
    /// Copy this volume (or snapshot) instead of making an empty one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<VolumeSource>,
}

/// `PATCH /api/v1/storage/pools/{pool}/volumes/{name}`: only the given
/// fields change; config keys are merged.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageVolumeUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::schema::ConfigMap>)]
    pub config: Option<ConfigMap>,
}

/// Where a copied volume comes from (`POST /api/v1/storage/pools/{pool}/volumes`
/// with `source`): a custom volume of the same project, or one of its
/// snapshots, in this pool or another.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSource {
    /// The volume to copy.
    #[schema(value_type = crate::names::VolumeName, example = "data")]
    pub volume: String,
    /// Copy this snapshot of the volume rather than the volume as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::names::SnapshotName>, example = "snap0")]
    pub snapshot: Option<String>,
    /// The pool holding the volume (default: the pool of the new volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::names::PoolName>, example = "default")]
    pub pool: Option<String>,
}

/// A copy of a custom volume (or of one of its snapshots) to make, checked:
/// what a backend's `copy_volume` is handed. The copy has the source's
/// content type and no snapshots of its own.
#[derive(Debug, Clone)]
pub struct VolumeCopy {
    /// The new volume's name (in the pool the request names).
    pub name: crate::names::VolumeName,
    pub description: String,
    /// The source's content type (`filesystem` or `block`), which the copy keeps.
    pub content_type: String,
    /// The new volume's whole config (the API layer decided it and held it
    /// to the policy).
    pub config: ConfigMap,
    pub source_pool: crate::names::PoolName,
    pub source_volume: crate::names::VolumeName,
    pub source_snapshot: Option<crate::names::SnapshotName>,
}

/// A snapshot of a custom volume, shaped as Incus's `StorageVolumeSnapshot`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct StorageVolumeSnapshot {
    /// The snapshot's own name (without the volume's).
    #[schema(example = "snap0")]
    pub name: String,
    pub description: String,
    /// The volume's config when the snapshot was taken.
    #[serde(deserialize_with = "null_as_default")]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
    /// `filesystem` or `block`, as the volume.
    #[schema(example = "filesystem")]
    pub content_type: String,
    // A date-time's default must be one (generators refuse `""`).
    #[schema(format = DateTime, default = "0001-01-01T00:00:00Z", example = "2030-01-01T00:00:00Z")]
    pub created_at: String,
    /// When the snapshot is deleted automatically (`0001-01-01T00:00:00Z`: never).
    #[serde(deserialize_with = "null_as_default")]
    #[schema(format = DateTime, default = "0001-01-01T00:00:00Z", example = "0001-01-01T00:00:00Z")]
    pub expires_at: String,
}

/// `POST /api/v1/storage/pools/{pool}/volumes/{name}/snapshots`
/// (Incus's `StorageVolumeSnapshotsPost`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageVolumeSnapshotCreate {
    /// The snapshot's name; the backend picks one (`snap0`, `snap1`...) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::names::SnapshotName>, example = "before-upgrade")]
    pub name: Option<String>,
    /// Delete the snapshot automatically at this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, example = "2030-01-01T00:00:00Z")]
    pub expires_at: Option<String>,
}
