//! The host's resources (`GET /api/v1/system/resources`): the parts of
//! Incus's `/1.0/resources` a dashboard shows (CPU, memory, disks), with
//! Incus's field names, and the space of each storage pool (Incus's
//! `/1.0/storage-pools/{pool}/resources`, one entry per pool). Both backends
//! fill the same shape; on Incus the objects are Incus's own, with the
//! fields lxgate does not publish dropped.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::storage::null_as_default;

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct SystemResources {
    pub cpu: ResourcesCpu,
    pub memory: ResourcesMemory,
    pub storage: ResourcesStorage,
    /// The space of each storage pool (lxgate's addition: Incus serves it
    /// per pool).
    #[serde(deserialize_with = "null_as_default")]
    pub storage_pools: Vec<ResourcesStoragePool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ResourcesCpu {
    #[schema(example = "x86_64")]
    pub architecture: String,
    /// Logical CPUs (hardware threads) in the host.
    #[schema(example = 8, minimum = 0)]
    pub total: u64,
    #[serde(deserialize_with = "null_as_default")]
    pub sockets: Vec<ResourcesCpuSocket>,
}

/// One CPU package.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ResourcesCpuSocket {
    /// The CPU's model name.
    #[schema(example = "Intel(R) Xeon(R) Processor")]
    pub name: String,
    #[schema(example = "GenuineIntel")]
    pub vendor: String,
    /// The socket's number.
    #[schema(example = 0, minimum = 0)]
    pub socket: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ResourcesMemory {
    /// Bytes of memory in the host.
    #[schema(example = 17179869184_u64, minimum = 0)]
    pub total: u64,
    /// Bytes in use (not available to new work).
    #[schema(example = 4294967296_u64, minimum = 0)]
    pub used: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ResourcesStorage {
    #[serde(deserialize_with = "null_as_default")]
    pub disks: Vec<ResourcesStorageDisk>,
    /// How many disks.
    #[schema(example = 1, minimum = 0)]
    pub total: u64,
}

/// A physical (or virtual machine's) disk of the host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ResourcesStorageDisk {
    /// The kernel's name for it.
    #[schema(example = "sda")]
    pub id: String,
    #[schema(example = "Samsung SSD 970")]
    pub model: String,
    /// The bus it hangs on: `nvme`, `scsi`, `virtio`...
    #[serde(rename = "type")]
    #[schema(example = "nvme")]
    pub disk_type: String,
    /// Bytes.
    #[schema(example = 512110190592_u64, minimum = 0)]
    pub size: u64,
    pub read_only: bool,
    pub removable: bool,
}

/// A storage pool's space and inodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ResourcesStoragePool {
    #[schema(example = "default")]
    pub name: String,
    #[schema(example = "dir")]
    pub driver: String,
    pub space: ResourcesUsage,
    pub inodes: ResourcesUsage,
}

/// A total and how much of it is used (bytes for space, counts for inodes).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ResourcesUsage {
    #[schema(example = 270553174016_u64, minimum = 0)]
    pub total: u64,
    #[schema(example = 62616670208_u64, minimum = 0)]
    pub used: u64,
}
