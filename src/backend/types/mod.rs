//! The Incus-shaped objects both backends return (DESIGN §2): field names and
//! shapes follow Incus's `/1.0` API so a dashboard cannot tell the backends apart.

pub mod events;
pub mod exec;
pub use events::*;
pub use exec::*;
pub mod images;
pub use images::*;
pub mod backups;
pub use backups::*;
pub mod cluster;
pub use cluster::*;
pub mod files;
pub use files::*;
pub mod snapshots;
pub use snapshots::*;
pub mod storage;
pub use storage::*;
pub mod networks;
pub use networks::*;
pub mod projects;
pub use projects::*;
pub mod profiles;
pub mod redact;
pub mod resources;
pub use resources::*;
pub mod schema;
pub use profiles::*;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `config` maps: string keys to string values, as in Incus.
pub type ConfigMap = BTreeMap<String, String>;
/// `devices` maps: device name to its settings.
pub type DevicesMap = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Instance {
    #[schema(example = "web-1")]
    pub name: String,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type")]
    #[schema(example = "container")]
    pub instance_type: String,
    #[schema(example = "Running")]
    pub status: String,
    #[schema(example = 103)]
    pub status_code: i64,
    pub description: String,
    #[schema(example = "x86_64")]
    pub architecture: String,
    pub created_at: String,
    pub last_used_at: String,
    pub location: String,
    #[schema(example = "default")]
    pub project: String,
    /// Its profiles, applied in this order under its own config and devices.
    // Maps and lists may come as `null` (Incus, for an instance on a
    // cluster member that is down).
    #[serde(deserialize_with = "storage::null_as_default")]
    pub profiles: Vec<String>,
    pub ephemeral: bool,
    pub stateful: bool,
    /// Its own config (what PUT and PATCH change).
    #[schema(value_type = schema::ConfigMap)]
    #[serde(deserialize_with = "storage::null_as_default")]
    pub config: ConfigMap,
    /// Its own devices.
    #[schema(value_type = schema::DevicesMap)]
    #[serde(deserialize_with = "storage::null_as_default")]
    pub devices: DevicesMap,
    /// What it runs with: its profiles' config in order, then its own.
    #[schema(value_type = schema::ConfigMap)]
    #[serde(deserialize_with = "storage::null_as_default")]
    pub expanded_config: ConfigMap,
    /// Its profiles' devices in order, then its own (a device of a later
    /// one replaces an earlier one of that name whole).
    #[schema(value_type = schema::DevicesMap)]
    #[serde(deserialize_with = "storage::null_as_default")]
    pub expanded_devices: DevicesMap,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct InstanceStateCpu {
    /// CPU time used, in nanoseconds.
    pub usage: i64,
    pub allocated_time: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct InstanceStateMemory {
    /// Bytes.
    pub usage: i64,
    pub usage_peak: i64,
    pub total: i64,
    pub swap_usage: i64,
    pub swap_usage_peak: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct InstanceStateDisk {
    pub usage: i64,
    pub total: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct NetworkAddress {
    /// `inet` or `inet6`.
    pub family: String,
    pub address: String,
    pub netmask: String,
    pub scope: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct NetworkCounters {
    pub bytes_received: i64,
    pub bytes_sent: i64,
    pub packets_received: i64,
    pub packets_sent: i64,
    pub errors_received: i64,
    pub errors_sent: i64,
    pub packets_dropped_inbound: i64,
    pub packets_dropped_outbound: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct InstanceStateNetwork {
    pub addresses: Vec<NetworkAddress>,
    pub counters: NetworkCounters,
    pub hwaddr: String,
    pub host_name: String,
    pub mtu: i64,
    pub state: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct InstanceState {
    pub status: String,
    pub status_code: i64,
    pub pid: i64,
    pub processes: i64,
    pub started_at: String,
    // Incus sends `null` for what a stopped instance has none of.
    #[serde(deserialize_with = "storage::null_as_default")]
    pub cpu: InstanceStateCpu,
    #[serde(deserialize_with = "storage::null_as_default")]
    pub memory: InstanceStateMemory,
    #[serde(deserialize_with = "storage::null_as_default")]
    #[schema(value_type = schema::InstanceStateDisks)]
    pub disk: BTreeMap<String, InstanceStateDisk>,
    #[serde(deserialize_with = "storage::null_as_default")]
    #[schema(value_type = schema::InstanceStateNetworks)]
    pub network: BTreeMap<String, InstanceStateNetwork>,
}

/// A background operation, as Incus reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Operation {
    pub id: String,
    /// `task`, `websocket` or `token`.
    pub class: String,
    pub description: String,
    pub created_at: String,
    pub updated_at: String,
    /// `Running`, `Success`, `Failure`, `Cancelled`...
    pub status: String,
    /// 103 running, 200 success, 400 failure, 401 cancelled (use this, not `status`).
    pub status_code: i64,
    /// Affected resources by kind, as `/1.0/...` URLs.
    pub resources: BTreeMap<String, Vec<String>>,
    /// What the operation reports (an exec's output, a new image's
    /// fingerprint...), `null` when it has nothing to say. Secrets (websocket
    /// `fds`, tokens) are never serialized: lxgate keeps them to bridge sockets
    /// itself, clients must not be able to join them.
    #[schema(value_type = Option<Object>)]
    #[serde(serialize_with = "redact::operation_metadata")]
    pub metadata: Value,
    pub may_cancel: bool,
    /// Why the operation failed.
    pub err: String,
    pub location: String,
    /// The lxgate user who started it and how it authenticated; `null`
    /// for operations started outside lxgate (or by lxgate itself).
    #[serde(skip_deserializing)]
    pub requested_by: Option<RequestedBy>,
    /// The project the operation runs in, as the backend knows it (Incus's
    /// objects do not carry it; lxgate's answers do not show it).
    #[serde(skip)]
    pub project: String,
}

/// Who started an operation through lxgate (never lxgate's own identity
/// towards the backend).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RequestedBy {
    #[schema(example = "alice")]
    pub username: String,
    /// How the request was authenticated: `bearer` (an access token from a
    /// login), `pat` (a personal access token) or `ticket` (a WebSocket
    /// ticket).
    #[schema(example = "pat")]
    pub auth_method: String,
    /// The personal access token's id, when one was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub token_id: Option<String>,
}

impl Operation {
    pub const RUNNING: i64 = 103;
    pub const SUCCESS: i64 = 200;
    pub const FAILURE: i64 = 400;

    /// The `status` Incus writes for a status code.
    pub fn status_of(code: i64) -> &'static str {
        match code {
            100 => "Created",
            101 => "Started",
            102 => "Stopped",
            103 => "Running",
            104 => "Cancelling",
            105 => "Pending",
            200 => "Success",
            401 => "Cancelled",
            _ => "Failure",
        }
    }

    /// The operation without what its command printed or was given (for
    /// callers who may see the project but not what operators run in it).
    pub fn without_exec_output(mut self) -> Self {
        redact::exec_output(&mut self.metadata);
        self
    }

    /// Finished one way or another (success, failure, cancelled).
    pub fn is_done(&self) -> bool {
        self.status_code >= 200
    }
}

/// Where a new instance comes from (documented as
/// `api::schemas::InstanceSourceSchema`, one variant per way):
/// * `image`: a local image by `alias` or `fingerprint`, or with `server`
///   and `protocol` one on a remote image server, pulled in the same call;
/// * `copy`: another instance or a snapshot (`source` = `instance` or
///   `instance/snapshot`), in `project` (default: the new one's);
/// * `none`: nothing (an empty virtual machine).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSource {
    /// `image`, `copy` or `none`.
    #[serde(rename = "type")]
    #[schema(value_type = schema::InstanceSourceType, example = "image")]
    pub kind: String,
    /// An image alias (on the server, or on `server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::names::ImageAliasName>, example = "busybox")]
    pub alias: Option<String>,
    /// An image fingerprint (on the server, or on `server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::names::ImageFingerprint>)]
    pub fingerprint: Option<String>,
    /// A remote image server to pull the image from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The remote server's protocol: `simplestreams` or `incus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A copy's source: `instance` or `instance/snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A copy's source project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

impl InstanceSource {
    /// A copy's source split into the instance and the snapshot, if any
    /// (names as given: the API checked them).
    pub fn copy_of(&self) -> Option<(&str, Option<&str>)> {
        let s = self.source.as_deref()?;
        Some(match s.split_once('/') {
            Some((i, snap)) => (i, Some(snap)),
            None => (s, None),
        })
    }
}

/// `POST /api/v1/instances`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[schema(example = json!({"name": "web-1", "type": "container", "source": {"type": "image", "alias": "busybox"}, "start": true}))]
#[serde(deny_unknown_fields)]
pub struct InstanceCreate {
    #[schema(value_type = crate::names::InstanceName, example = "web-1")]
    pub name: String,
    /// `container` (default) or `virtual-machine`.
    #[serde(default, rename = "type")]
    #[schema(value_type = Option<schema::InstanceType>, example = "container")]
    pub instance_type: Option<String>,
    #[schema(value_type = crate::api::schemas::InstanceSourceSchema)]
    pub source: InstanceSource,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(value_type = schema::ConfigMap)]
    pub config: ConfigMap,
    #[serde(default)]
    #[schema(value_type = schema::DevicesMap)]
    pub devices: DevicesMap,
    /// Profiles of the project to apply, in order, under the instance's own
    /// config and devices; default `["default"]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<crate::names::ProfileName>>)]
    pub profiles: Option<Vec<String>>,
    /// Start the instance once created.
    #[serde(default)]
    pub start: bool,
    #[serde(default)]
    pub ephemeral: bool,
}

/// `PUT /api/v1/instances/{name}` (full) and `PATCH` (only the given fields).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::ConfigMap>)]
    pub config: Option<ConfigMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::DevicesMap>)]
    pub devices: Option<DevicesMap>,
    /// Profiles of the project, in the order they apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::names::ProfileName>>)]
    pub profiles: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<bool>,
}

/// `PUT /api/v1/instances/{name}/state`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    /// `start`, `stop`, `restart`, `freeze` or `unfreeze`.
    #[schema(value_type = schema::InstanceAction, example = "stop")]
    pub action: String,
    /// Seconds to wait for a clean stop before giving up (or forcing, with `force`).
    #[serde(default = "default_timeout")]
    #[schema(minimum = -1, maximum = 3600)]
    pub timeout: i64,
    #[serde(default)]
    pub force: bool,
}

fn default_timeout() -> i64 {
    30
}

pub const STATE_ACTIONS: [&str; 5] = ["start", "stop", "restart", "freeze", "unfreeze"];
