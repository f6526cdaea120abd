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

/// `POST /api/v1/storage/pools/{pool}/volumes`: a new, empty custom volume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageVolumeCreate {
    #[schema(value_type = crate::names::VolumeName, example = "data")]
    pub name: String,
    /// `filesystem` (default) or `block` (block volumes attach to VMs only).
    #[serde(default)]
    #[schema(value_type = Option<super::schema::VolumeContentType>, example = "filesystem")]
    pub content_type: Option<String>,
    #[serde(default)]
    pub description: String,
    /// Settings such as `{"size": "10GiB"}`.
    #[serde(default)]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
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
