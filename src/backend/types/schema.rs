//! Schema-only stand-ins: named OpenAPI components for the map type aliases.
//!
//! utoipa names a type alias after what it aliases, so `ConfigMap` and
//! `DevicesMap` were both published as one `BTreeMap` component (with the
//! devices' shape): a pool's or an instance's `config` was typed as a map of
//! maps. Fields of those types say `#[schema(value_type = schema::ConfigMap)]`
//! (or `DevicesMap`). Never built: only their schemas are used.

use std::collections::BTreeMap;

use utoipa::ToSchema;

/// String keys to string values (Incus's `config` maps), e.g.
/// `{"limits.cpu": "2"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ConfigMap(BTreeMap<String, String>);

/// Device name to that device's options (Incus's `devices` maps), e.g.
/// `{"root": {"type": "disk", "path": "/", "pool": "default"}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DevicesMap(BTreeMap<String, DeviceOptions>);

/// One device's options: string keys to string values, `type` among them.
pub struct DeviceOptions;

impl utoipa::PartialSchema for DeviceOptions {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        serde_json::from_value(serde_json::json!({
            "type": "object",
            "description": "One device's options: string keys to string values, `type` (`disk`, `nic`...) among them.",
            "required": ["type"],
            "properties": {"type": {"type": "string", "examples": ["disk"]}},
            "additionalProperties": {"type": "string"}
        }))
        .expect("a valid schema")
    }
}

impl ToSchema for DeviceOptions {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("DeviceOptions")
    }
}

/// Disk name to its usage (`InstanceState.disk`). Named so that generators
/// that name an inline map after its parent and property do not make a
/// second `InstanceStateDisk`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct InstanceStateDisks(BTreeMap<String, super::InstanceStateDisk>);

/// Interface name to its state (`InstanceState.network`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct InstanceStateNetworks(BTreeMap<String, super::InstanceStateNetwork>);

/// What `PUT instances/{name}/state` and `POST instances/{name}/{action}` do.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum InstanceAction {
    Start,
    Stop,
    Restart,
    Freeze,
    Unfreeze,
}

/// What evacuating a cluster member does with its instances: `auto` lets
/// each instance's `cluster.evacuate` setting decide (moved when it can be,
/// stopped otherwise).
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
#[allow(dead_code)]
pub enum EvacuationMode {
    Auto,
    Stop,
    Migrate,
    LiveMigrate,
}

/// An instance's type.
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
#[allow(dead_code)]
pub enum InstanceType {
    Container,
    VirtualMachine,
}

/// Where a new instance comes from: an image, a copy of an instance or a
/// snapshot, or nothing (an empty virtual machine).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum InstanceSourceType {
    Image,
    Copy,
    None,
}

/// The protocol of an image server.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ImageServerProtocol {
    Simplestreams,
    Incus,
}

/// Compression of a backup tarball.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum CompressionAlgorithm {
    None,
    Gzip,
    Bzip2,
    Lz4,
    Lzma,
    Xz,
    Zstd,
}

/// A network's type (Incus's; the embedded backend manages `bridge` only).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum NetworkType {
    Bridge,
    Macvlan,
    Sriov,
    Ovn,
    Physical,
}

/// A storage driver Incus knows (the embedded backend has `dir` only).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum StorageDriver {
    Dir,
    Btrfs,
    Lvm,
    Lvmcluster,
    Zfs,
    Ceph,
    Cephfs,
    Cephobject,
    Linstor,
    Powerflex,
    Pure,
    Truenas,
}

/// What a custom volume holds.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum VolumeContentType {
    Filesystem,
    Block,
}
