//! The backend boundary: what the API layer may ask of whatever runs the
//! instances, in Incus-shaped types, with no knowledge of HTTP auth.
//!
//! One small trait per resource, each in its own module here (`instances`,
//! `snapshots`, `storage`...) and implemented in the file of the same name
//! of each backend (`embedded/instances.rs`, `incus/instances.rs`...);
//! `Backend` is their sum.

mod backups;
mod cluster;
pub mod embedded;
pub mod error;
pub mod events;
mod exec;
mod files;
mod images;
pub mod incus;
mod instances;
mod networks;
mod operations;
mod profiles;
mod projects;
mod snapshots;
mod storage;
mod system;
pub mod types;
mod volume_snapshots;

pub use backups::Backups;
pub use cluster::{Cluster, MemberAction};
pub use error::{BackendError, Missing, ReportMissing, human_bytes, image_too_large};
pub use events::Events;
pub use exec::Exec;
pub use files::Files;
pub use images::Images;
pub use instances::Instances;
pub use networks::Networks;
pub use operations::Operations;
pub use profiles::Profiles;
pub use projects::Projects;
pub use snapshots::Snapshots;
pub use storage::Storage;
pub use system::System;
pub use volume_snapshots::VolumeSnapshots;

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

/// One driver a backend uses (LXC, QEMU, Incus) and whether it works here.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DriverInfo {
    /// `lxc`, `qemu` or `incus`.
    #[schema(example = "lxc")]
    pub name: String,
    /// What the driver runs: `container` or `virtual-machine`.
    #[schema(example = "container")]
    pub instance_type: String,
    pub available: bool,
    /// The driver's own version string, when it could be read.
    #[schema(example = "5.0.2")]
    pub version: Option<String>,
    /// Why the driver is unavailable, or a note on how it runs (e.g. `tcg`).
    pub detail: Option<String>,
}

/// `GET /api/v1/system/info`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemInfo {
    /// `embedded` or `incus`.
    #[schema(example = "embedded")]
    pub backend: String,
    /// lxgate's own version.
    #[schema(example = "0.1.0")]
    pub version: String,
    /// The API version (the path prefix).
    #[schema(example = "v1")]
    pub api_version: String,
    /// The version of the server behind lxgate (Incus's, or the host kernel's for embedded).
    pub server_version: Option<String>,
    pub drivers: Vec<DriverInfo>,
    /// Feature flags a dashboard can use to show or hide actions.
    pub features: BTreeMap<String, bool>,
}

/// A list as names (`expand=false`, Incus recursion 0) or full objects.
#[derive(Debug)]
pub enum Listing<T> {
    Names(Vec<String>),
    Full(Vec<T>),
}

impl<T> Listing<T> {
    /// The list entries an endpoint returns: `full` for each object, `name`
    /// for each name.
    pub fn into_entries<E>(self, full: impl Fn(T) -> E, name: impl Fn(String) -> E) -> Vec<E> {
        match self {
            Listing::Names(names) => names.into_iter().map(name).collect(),
            Listing::Full(items) => items.into_iter().map(full).collect(),
        }
    }
}

/// Which instances a list covers.
#[derive(Debug, Clone, Copy)]
pub struct ListScope<'a> {
    /// `None` = every project (admins only; the API layer checks).
    pub project: Option<&'a crate::names::ProjectName>,
    /// Incus filter expression, passed through.
    pub filter: Option<&'a str>,
    pub expand: bool,
    /// Read from the backend itself, past any list kept in memory (what
    /// quotas count must include a change made a moment ago elsewhere).
    pub fresh: bool,
}

/// What every backend implements: the sum of the resource traits, each
/// implemented in that resource's file of each backend. Object-safe: the app
/// holds `Arc<dyn Backend>`. What a driver cannot do on this host, it says
/// itself (`BackendError::NotSupported`: 501 with the reason).
pub trait Backend:
    System
    + Instances
    + Exec
    + Files
    + Snapshots
    + Backups
    + Images
    + Storage
    + VolumeSnapshots
    + Networks
    + Projects
    + Profiles
    + Cluster
    + Operations
    + Events
{
}

impl<T> Backend for T where
    T: System
        + Instances
        + Exec
        + Files
        + Snapshots
        + Backups
        + Images
        + Storage
        + VolumeSnapshots
        + Networks
        + Projects
        + Profiles
        + Cluster
        + Operations
        + Events
{
}
