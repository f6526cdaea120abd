//! Networks, their state and DHCP leases, shaped as Incus's `/1.0/networks`
//! objects.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::storage::null_as_default;
use super::{ConfigMap, NetworkAddress};

/// A network: managed (created through the API, e.g. a `bridge`) or a host
/// interface the backend only reports (`managed: false`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Network {
    #[schema(example = "lxgbr0")]
    pub name: String,
    pub description: String,
    /// `bridge`, `macvlan`, `sriov`, `ovn`, `physical`; host interfaces show
    /// their kind (`physical`, `loopback`, `bridge`...).
    #[serde(rename = "type")]
    #[schema(example = "bridge")]
    pub network_type: String,
    /// Whether the backend manages this network (false: a host interface).
    pub managed: bool,
    /// `Created`, `Pending`, `Errored` or `Unknown` (managed networks only).
    pub status: String,
    #[serde(deserialize_with = "null_as_default")]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
    /// `/1.0/...` URLs of the instances and profiles using the network.
    #[serde(deserialize_with = "null_as_default")]
    pub used_by: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub locations: Vec<String>,
    #[schema(example = "default")]
    pub project: String,
}

/// `POST /api/v1/networks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    /// For a `bridge` this is also the host interface name (at most 15 characters).
    #[schema(value_type = crate::api::schemas::NewNetworkName, example = "lxgbr0")]
    pub name: String,
    /// `bridge` (default), `macvlan`, `sriov`, `ovn` or `physical`.
    #[serde(default, rename = "type")]
    #[schema(value_type = Option<super::schema::NetworkType>, example = "bridge")]
    pub network_type: Option<String>,
    #[serde(default)]
    pub description: String,
    /// E.g. `{"ipv4.address": "10.0.3.1/24", "ipv4.nat": "true"}`.
    #[serde(default)]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
}

/// `PUT /api/v1/networks/{name}` (full: left-out fields are emptied, as in
/// Incus) and `PATCH` (only the given fields; config keys are merged).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::schema::ConfigMap>)]
    pub config: Option<ConfigMap>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct NetworkStateCounters {
    pub bytes_received: i64,
    pub bytes_sent: i64,
    pub packets_received: i64,
    pub packets_sent: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct NetworkStateBridge {
    /// Bridge id, e.g. `8000.0a0f7c6edbd9`.
    pub id: String,
    pub stp: bool,
    /// Milliseconds.
    pub forward_delay: i64,
    pub vlan_default: i64,
    pub vlan_filtering: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub upper_devices: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct NetworkStateBond {
    pub mode: String,
    pub transmit_policy: String,
    pub up_delay: i64,
    pub down_delay: i64,
    pub mii_frequency: i64,
    pub mii_state: String,
    #[serde(deserialize_with = "null_as_default")]
    pub lower_devices: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct NetworkStateVlan {
    pub lower_device: String,
    pub vid: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct NetworkStateOvn {
    pub chassis: String,
    pub logical_router: String,
    pub logical_switch: String,
    pub uplink_ipv4: String,
    pub uplink_ipv6: String,
}

/// `GET /api/v1/networks/{name}/state`: the interface on the host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct NetworkState {
    #[serde(deserialize_with = "null_as_default")]
    pub addresses: Vec<NetworkAddress>,
    pub counters: NetworkStateCounters,
    #[schema(example = "10:66:6a:5a:83:57")]
    pub hwaddr: String,
    #[schema(example = 1500)]
    pub mtu: i64,
    /// Link state: `up` or `down`.
    #[schema(example = "up")]
    pub state: String,
    /// Interface type, e.g. `broadcast`, `loopback`.
    #[serde(rename = "type")]
    #[schema(example = "broadcast")]
    pub kind: String,
    /// Bridge details (bridges only).
    pub bridge: Option<NetworkStateBridge>,
    /// Bond details (bonds only).
    pub bond: Option<NetworkStateBond>,
    /// VLAN details (VLAN interfaces only).
    pub vlan: Option<NetworkStateVlan>,
    /// OVN details (OVN networks only).
    pub ovn: Option<NetworkStateOvn>,
}

/// A DHCP lease (or static allocation) on a managed network.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct NetworkLease {
    #[schema(example = "web-1")]
    pub hostname: String,
    #[schema(example = "10:66:6a:2c:89:d9")]
    pub hwaddr: String,
    #[schema(example = "10.0.3.98")]
    pub address: String,
    /// `static`, `dynamic` or `gateway`.
    #[serde(rename = "type")]
    #[schema(example = "dynamic")]
    pub lease_type: String,
    pub location: String,
    pub project: String,
}
