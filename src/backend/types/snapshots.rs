//! Instance snapshots, in Incus's shapes (`InstanceSnapshot`, `InstanceSnapshotsPost`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ConfigMap, DevicesMap};

/// A point-in-time copy of an instance (its configuration and disk, and with
/// `stateful` its memory too).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Snapshot {
    #[schema(example = "before-upgrade")]
    pub name: String,
    pub description: String,
    #[schema(example = "x86_64")]
    pub architecture: String,
    pub created_at: String,
    /// When the snapshot is deleted automatically (`0001-01-01T00:00:00Z`: never).
    pub expires_at: String,
    pub last_used_at: String,
    pub ephemeral: bool,
    /// Whether the snapshot holds the instance's runtime state.
    pub stateful: bool,
    pub profiles: Vec<String>,
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
    #[schema(value_type = super::schema::DevicesMap)]
    pub devices: DevicesMap,
    #[schema(value_type = super::schema::ConfigMap)]
    pub expanded_config: ConfigMap,
    #[schema(value_type = super::schema::DevicesMap)]
    pub expanded_devices: DevicesMap,
    /// Bytes on disk (-1 when the storage driver cannot tell).
    pub size: i64,
}

/// `POST /api/v1/instances/{name}/snapshots`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// The snapshot's name; the backend picks one (`snap0`, `snap1`...) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::names::SnapshotName>, example = "before-upgrade")]
    pub name: Option<String>,
    /// Include the running instance's memory (needs CRIU for containers).
    #[serde(default)]
    pub stateful: bool,
    /// Delete the snapshot automatically at this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, example = "2030-01-01T00:00:00Z")]
    pub expires_at: Option<String>,
}

/// `POST /api/v1/instances/{name}/snapshots/{snap}/restore` (the body is optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRestore {
    /// Restore the runtime state too (the snapshot must be stateful).
    #[serde(default)]
    pub stateful: bool,
}
