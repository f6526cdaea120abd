//! Instance backups, in Incus's shapes (`InstanceBackup`, `InstanceBackupsPost`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A backup tarball of an instance, kept on the server until deleted or expired.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Backup {
    #[schema(example = "nightly")]
    pub name: String,
    pub created_at: String,
    /// When the backup is deleted automatically (`0001-01-01T00:00:00Z`: never).
    pub expires_at: String,
    /// Whether the instance's snapshots were left out.
    pub instance_only: bool,
    /// Whether the storage driver's own binary format was used instead of a plain tarball.
    pub optimized_storage: bool,
}

/// `POST /api/v1/instances/{name}/backups`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupCreate {
    /// The backup's name; the backend picks one (`backup0`...) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::names::BackupName>, example = "nightly")]
    pub name: Option<String>,
    /// Delete the backup automatically at this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, example = "2030-01-01T00:00:00Z")]
    pub expires_at: Option<String>,
    /// Leave the instance's snapshots out.
    #[serde(default)]
    pub instance_only: bool,
    /// Use the storage driver's binary format (faster, restorable only on the same driver).
    #[serde(default)]
    pub optimized_storage: bool,
    /// `none`, `gzip` (the server's default), `bzip2`, `lz4`, `lzma`, `xz` or `zstd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::schema::CompressionAlgorithm>, example = "gzip")]
    pub compression_algorithm: Option<String>,
}

/// The compression algorithms a backup may use.
pub const COMPRESSION_ALGORITHMS: [&str; 7] =
    ["none", "gzip", "bzip2", "lz4", "lzma", "xz", "zstd"];
