//! Projects and their usage against limits, shaped as Incus's `/1.0/projects`
//! objects.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ConfigMap;
use super::storage::null_as_default;

/// A project: a namespace for instances, volumes, images, profiles and
/// networks, with optional limits (`limits.instances`, `limits.memory`...).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Project {
    #[schema(example = "team-a")]
    pub name: String,
    pub description: String,
    /// Features (`features.images`...) and limits (`limits.instances`...).
    #[serde(deserialize_with = "null_as_default")]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
    /// `/1.0/...` URLs of what lives in the project.
    #[serde(deserialize_with = "null_as_default")]
    pub used_by: Vec<String>,
    /// lxgate's instance policy in this project (not a field of Incus's
    /// object; filled in by lxgate).
    pub policy: ProjectPolicy,
}

/// What non-admins may put into instances of a project (DESIGN §4a), and
/// whether the backend enforces it too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ProjectPolicy {
    /// The backend itself refuses what the policy refuses (Incus:
    /// `restricted=true` with matching `restricted.*` keys; apply it with
    /// `POST /api/v1/projects/{name}/restrict`). Always false on the
    /// embedded backend, which has no such setting and confines containers
    /// by running them unprivileged.
    pub restricted: bool,
    /// Config keys (or `prefix.*`) an admin allowed non-admins here beyond
    /// the default list: the project config key `user.lxgate.allow.config`.
    #[schema(example = json!(["security.nesting"]))]
    pub allow_config: Vec<String>,
    /// Device types an admin allowed non-admins here, with any option: the
    /// project config key `user.lxgate.allow.devices`.
    #[schema(example = json!(["unix-char"]))]
    pub allow_devices: Vec<String>,
    /// Operators and viewers see and act on only the instances they made
    /// (admins of the project see all): the project config key
    /// `user.lxgate.owner-only`.
    pub owner_only: bool,
}

/// `POST /api/v1/projects`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreate {
    #[schema(value_type = crate::names::ProjectName, example = "team-a")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// E.g. `{"limits.instances": "5", "features.images": "false"}`.
    #[serde(default)]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
}

/// `PUT /api/v1/projects/{name}` (full: left-out fields are emptied, as in
/// Incus) and `PATCH` (only the given fields; config keys are merged).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::schema::ConfigMap>)]
    pub config: Option<ConfigMap>,
}

/// One resource's usage against its limit. The field names are Incus's own
/// (capitalized).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ProjectStateResource {
    /// The limit, -1 when there is none.
    #[serde(rename = "Limit")]
    #[schema(example = 10)]
    pub limit: i64,
    /// Current usage (a count, or bytes for `memory` and `disk`).
    #[serde(rename = "Usage")]
    #[schema(example = 4)]
    pub usage: i64,
}

/// `GET /api/v1/projects/{name}/state`: usage vs limits per resource
/// (`instances`, `containers`, `virtual-machines`, `cpu`, `memory`, `disk`,
/// `networks`, `processes`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ProjectState {
    #[serde(deserialize_with = "null_as_default")]
    pub resources: BTreeMap<String, ProjectStateResource>,
}
