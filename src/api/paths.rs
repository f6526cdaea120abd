//! The path parameters of the routes, one struct per path shape.
//!
//! A handler extracts one of these (`Path(InstancePath { name }):
//! Path<InstancePath>`) and names the same struct in its
//! `#[utoipa::path(params(...))]`, so the type a handler extracts is the type
//! its OpenAPI parameters come from: the documented names, types and
//! descriptions cannot drift from what the handler checks. The fields are
//! the checked name types, so a value its type refuses is 400
//! `invalid_name` (see `crate::api::Path`).
//!
//! Field names are the placeholders of the route template (axum matches a
//! struct by name), and field order is their order in the path (the order
//! the parameters are documented in).

use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Username;
use crate::names::{
    BackupName, DeviceName, ImageAliasName, ImageFingerprint, InstanceName, LogFileName,
    MemberName, NetworkName, OperationId, PoolName, ProfileName, ProjectName, SnapshotName,
    TeamName, VolumeName,
};

/// `/instances/{name}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct InstancePath {
    /// Instance name
    pub name: InstanceName,
}

/// `/instances/{name}/{action}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct InstanceActionPath {
    /// Instance name
    pub name: InstanceName,
    // A `String`, not the enum: an unknown action is a route lxgate does not
    // have (the handler's 404 `route_not_found`), not a bad name.
    /// start, stop, restart, freeze or unfreeze
    #[param(value_type = crate::backend::types::schema::InstanceAction)]
    pub action: String,
}

/// `/instances/{name}/snapshots/{snap}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct InstanceSnapshotPath {
    /// Instance name
    pub name: InstanceName,
    /// Snapshot name
    pub snap: SnapshotName,
}

/// `/instances/{name}/backups/{backup}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BackupPath {
    /// Instance name
    pub name: InstanceName,
    /// Backup name
    pub backup: BackupName,
}

/// `/instances/{name}/logs/{file}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct LogPath {
    /// Instance name
    pub name: InstanceName,
    /// Log file name, e.g. `lxc.log`
    pub file: LogFileName,
}

/// `/instances/{name}/volumes/{device}` and `/instances/{name}/nics/{device}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DevicePath {
    /// Instance name
    pub name: InstanceName,
    /// The device name
    pub device: DeviceName,
}

/// `/storage/pools/{pool}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PoolPath {
    /// Pool name
    pub pool: PoolName,
}

/// `/storage/pools/{pool}/volumes/{name}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VolumePath {
    /// Pool name
    pub pool: PoolName,
    /// Volume name
    pub name: VolumeName,
}

/// `/storage/pools/{pool}/volumes/{name}/snapshots/{snap}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VolumeSnapshotPath {
    /// Pool name
    pub pool: PoolName,
    /// Volume name
    pub name: VolumeName,
    /// Snapshot name
    pub snap: SnapshotName,
}

/// `/networks/{name}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NetworkPath {
    /// Network name
    pub name: NetworkName,
}

/// `/profiles/{name}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProfilePath {
    /// Profile name
    pub name: ProfileName,
}

/// `/projects/{name}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProjectPath {
    /// Project name
    pub name: ProjectName,
}

/// `/teams/{name}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TeamPath {
    /// Team name
    pub name: TeamName,
}

/// `/teams/{name}/members/{username}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TeamMemberPath {
    /// Team name
    pub name: TeamName,
    /// The member's username
    pub username: Username,
}

/// `/teams/{name}/projects/{project}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TeamProjectPath {
    /// Team name
    pub name: TeamName,
    /// The project
    pub project: ProjectName,
}

/// `/users/{username}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    /// The username
    pub username: Username,
}

/// `/users/{username}/projects/{project}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserProjectPath {
    /// The username
    pub username: Username,
    /// The project
    pub project: ProjectName,
}

/// `/operations/{id}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OperationPath {
    /// Operation id (UUID)
    #[param(value_type = uuid::Uuid)]
    pub id: OperationId,
}

/// `/images/{fingerprint}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ImagePath {
    /// Fingerprint, or a unique prefix (lowercase hex)
    pub fingerprint: ImageFingerprint,
}

/// `/images/aliases/{name}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AliasPath {
    /// Alias name
    pub name: ImageAliasName,
}

/// `/cluster/members/{name}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MemberPath {
    /// Cluster member name
    pub name: MemberName,
}

/// `/auth/tokens/{id}`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenPath {
    /// Personal access token id (UUID)
    #[param(value_type = String, format = Uuid, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub id: uuid::Uuid,
}
