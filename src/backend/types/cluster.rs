//! Cluster members, shaped as Incus's `/1.0/cluster/members` objects.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ConfigMap;
use super::storage::null_as_default;

/// A server of the cluster behind lxgate. A server that is not clustered
/// (the embedded backend's host, a standalone Incus) is the one member of a
/// cluster of one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ClusterMember {
    #[schema(example = "m1")]
    pub server_name: String,
    /// The member's API address (empty for a server that is not clustered).
    #[schema(example = "https://10.0.0.11:8443")]
    pub url: String,
    /// Whether the member holds a copy of the cluster database.
    pub database: bool,
    /// `Online`, `Offline`, `Evacuated` or `Blocked`.
    #[schema(example = "Online")]
    pub status: String,
    /// What the status means, in the backend's words (`Fully operational`,
    /// or why the member is offline).
    #[schema(example = "Fully operational")]
    pub message: String,
    #[schema(example = "x86_64")]
    pub architecture: String,
    #[schema(example = "default")]
    pub failure_domain: String,
    pub description: String,
    #[serde(deserialize_with = "null_as_default")]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
    /// Cluster groups the member is in.
    #[serde(deserialize_with = "null_as_default")]
    pub groups: Vec<String>,
    /// `database-leader`, `database`, `database-standby`... (empty for a
    /// server that is not clustered).
    #[serde(deserialize_with = "null_as_default")]
    pub roles: Vec<String>,
}

/// What `evacuate` does with the member's instances (Incus's evacuation
/// modes; `auto` lets each instance's `cluster.evacuate` decide).
pub const EVACUATION_MODES: [&str; 4] = ["auto", "stop", "migrate", "live-migrate"];
