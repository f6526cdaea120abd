//! `/api/v1/networks`: managed networks (admins create and change them) and
//! the host interfaces the backend reports, their state and DHCP leases,
//! plus attaching instances to networks as `nic` devices.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::api::devices;
use crate::api::operation::OperationRef;
use crate::api::ownership;
use crate::api::paths::{DevicePath, InstancePath, NetworkPath};
use crate::api::problems::{
    Admin403, BackendRefused400, DeviceNameTaken409, InstanceChanged412, ManagedNetworkMissing,
    NameTaken409, NetworkMissing, Operator403, ProfileDevice409, Stale412, TooManyOperations429,
    Viewer403,
};
use crate::api::resource::{Entry, ProjectListQuery, created, entries, with_etag};
use crate::api::resource::{IfMatch, ProjectQuery, ProjectScoped, ProjectWaitQuery};
use crate::api::{Json, Page, Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::Listing;
use crate::backend::types::{
    Instance, Network, NetworkCreate, NetworkLease, NetworkState, NetworkUpdate, Operation,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::names::{DeviceName, NetworkName};

/// Network types Incus manages; anything else is refused before the backend
/// sees it.
const NETWORK_TYPES: [&str; 5] = ["bridge", "macvlan", "sriov", "ovn", "physical"];

/// List networks: managed ones and the host's interfaces (`managed: false`).
#[utoipa::path(get, path = "", tag = "networks", operation_id = "list_networks",
    security(("bearer" = [])),
    params(ProjectListQuery),
    responses(
        (status = 200, description = "A page of networks (or names)", body = Page<Entry<Network>>),
        Viewer403))]
pub async fn list_networks(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ProjectListQuery>,
) -> ApiResult<Json<Page<Entry<Network>>>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (limit, offset) = q.page()?;
    let mut listing = state
        .backend
        .list_networks(&project, q.expand.unwrap_or(true))
        .await?;
    if let Listing::Full(items) = &mut listing {
        ownership::filter_used_by(&state, &user, items).await?;
    }
    Ok(Json(Page::slice(entries(listing), limit, offset)))
}

/// Create a managed network (admins). A `bridge` without addresses:
/// `{"name": "br1", "config": {"ipv4.address": "none", "ipv6.address": "none"}}`.
#[utoipa::path(post, path = "", tag = "networks", operation_id = "create_network",
    security(("bearer" = [])),
    params(ProjectQuery),
    request_body = NetworkCreate,
    responses(
        (status = 201, description = "Created", body = Network,
            headers(("location" = String, description = "The network's URL"))),
        BackendRefused400, Admin403, NameTaken409))]
pub async fn create_network(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ProjectQuery>,
    Json(req): Json<NetworkCreate>,
) -> ApiResult<Response> {
    user.require(Permission::InfraManage, "")?;
    let project = q.project()?;
    let name = NetworkName::parse(&req.name).map_err(|e| ApiError::invalid_field("name", e))?;
    // New networks are named like interfaces on the host, whatever their
    // type: 2-15 characters (what Incus asks of bridges; OVN and macvlan
    // names could be longer there, but a name that fits every type keeps a
    // network's type changeable by recreating it), and not `all` or
    // `default`, the kernel's settings for every and for new interfaces
    // (creating one failed as a 500).
    if !(2..=15).contains(&name.len()) {
        return Err(ApiError::invalid_field(
            "name",
            "a new network's name is 2-15 characters (an interface name on the host)",
        ));
    }
    if matches!(name.as_str(), "all" | "default") {
        return Err(ApiError::invalid_field(
            "name",
            "a network's name is its interface name on the host, where `all` and `default` are taken",
        ));
    }
    if let Some(t) = &req.network_type
        && !NETWORK_TYPES.contains(&t.as_str())
    {
        return Err(ApiError::invalid_field(
            "type",
            format!("type must be one of {}", NETWORK_TYPES.join(", ")),
        ));
    }
    state.backend.create_network(&project, &req).await?;
    let (network, _) = state.backend.get_network(&project, &name).await?;
    Ok(created(
        &format!("/api/v1/networks/{name}?project={}", project.as_str()),
        network,
    ))
}

/// Get a network. The `ETag` header can be sent back as `If-Match`.
#[utoipa::path(get, path = "/{name}", tag = "networks", operation_id = "get_network",
    security(("bearer" = [])),
    params(NetworkPath, ProjectQuery),
    responses(
        (status = 200, description = "The network", body = Network,
            headers(("etag" = String, description = "Version, for If-Match"))),
        Viewer403, NetworkMissing))]
pub async fn get_network(
    user: AuthUser,
    State(state): State<AppState>,
    Path(NetworkPath { name }): Path<NetworkPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (mut n, etag) = state.backend.get_network(&project, &name).await?;
    ownership::filter_used_by(&state, &user, std::slice::from_mut(&mut n)).await?;
    Ok(with_etag(Json(n).into_response(), etag))
}

async fn update(
    state: AppState,
    user: AuthUser,
    name: NetworkName,
    q: ProjectQuery,
    if_match: Option<String>,
    body: NetworkUpdate,
    replace: bool,
) -> ApiResult<Response> {
    user.require(Permission::InfraManage, "")?;
    let project = q.project()?;
    state
        .backend
        .update_network(&project, &name, &body, if_match.as_deref(), replace)
        .await?;
    let (n, etag) = state.backend.get_network(&project, &name).await?;
    Ok(with_etag(Json(n).into_response(), etag))
}

/// Replace a managed network's description and config (left-out fields are
/// emptied, as in Incus; admins).
#[utoipa::path(put, path = "/{name}", tag = "networks", operation_id = "replace_network",
    security(("bearer" = [])),
    params(NetworkPath, ProjectQuery,
        ("if-match" = Option<String>, Header, description = "ETag from GET; 412 if the network changed since")),
    request_body = NetworkUpdate,
    responses(
        (status = 200, description = "Updated", body = Network),
        BackendRefused400, Admin403, ManagedNetworkMissing, Stale412))]
pub async fn replace_network(
    user: AuthUser,
    State(state): State<AppState>,
    Path(NetworkPath { name }): Path<NetworkPath>,
    Query(q): Query<ProjectQuery>,
    IfMatch(if_match): IfMatch,
    Json(body): Json<NetworkUpdate>,
) -> ApiResult<Response> {
    update(state, user, name, q, if_match, body, true).await
}

/// Change a managed network's description or some config keys (admins).
#[utoipa::path(patch, path = "/{name}", tag = "networks", operation_id = "update_network",
    security(("bearer" = [])),
    params(NetworkPath, ProjectQuery,
        ("if-match" = Option<String>, Header, description = "ETag from GET; 412 if the network changed since")),
    request_body = NetworkUpdate,
    responses(
        (status = 200, description = "Updated", body = Network),
        BackendRefused400, Admin403, ManagedNetworkMissing, Stale412))]
pub async fn update_network(
    user: AuthUser,
    State(state): State<AppState>,
    Path(NetworkPath { name }): Path<NetworkPath>,
    Query(q): Query<ProjectQuery>,
    IfMatch(if_match): IfMatch,
    Json(body): Json<NetworkUpdate>,
) -> ApiResult<Response> {
    update(state, user, name, q, if_match, body, false).await
}

/// Delete a managed network; it must be unused (admins).
#[utoipa::path(delete, path = "/{name}", tag = "networks", operation_id = "delete_network",
    security(("bearer" = [])),
    params(NetworkPath, ProjectQuery),
    responses(
        (status = 204, description = "Deleted"),
        Admin403, ManagedNetworkMissing,
        (status = 409, description = "The network is in use, or is a host interface lxgate does not manage", body = Problem, content_type = "application/problem+json")))]
pub async fn delete_network(
    user: AuthUser,
    State(state): State<AppState>,
    Path(NetworkPath { name }): Path<NetworkPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<StatusCode> {
    user.require(Permission::InfraManage, "")?;
    let project = q.project()?;
    state.backend.delete_network(&project, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The network's interface on the host: link state, addresses, counters.
#[utoipa::path(get, path = "/{name}/state", tag = "networks", operation_id = "get_network_state",
    security(("bearer" = [])),
    params(NetworkPath, ProjectQuery),
    responses(
        (status = 200, description = "The state", body = NetworkState),
        Viewer403, NetworkMissing))]
pub async fn get_network_state(
    user: AuthUser,
    State(state): State<AppState>,
    Path(NetworkPath { name }): Path<NetworkPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Json<NetworkState>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    Ok(Json(state.backend.network_state(&project, &name).await?))
}

/// DHCP leases (and static allocations) on a managed network.
#[utoipa::path(get, path = "/{name}/leases", tag = "networks", operation_id = "list_network_leases",
    security(("bearer" = [])),
    params(NetworkPath, ProjectQuery),
    responses(
        (status = 200, description = "The leases", body = Vec<NetworkLease>),
        Viewer403, ManagedNetworkMissing))]
pub async fn list_network_leases(
    user: AuthUser,
    State(state): State<AppState>,
    Path(NetworkPath { name }): Path<NetworkPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Json<Vec<NetworkLease>>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    Ok(Json(state.backend.network_leases(&project, &name).await?))
}

// --- NICs on instances ---

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachNic {
    /// A managed network of the instance's project.
    #[schema(value_type = crate::names::NetworkName, example = "lxgbr0")]
    pub network: String,
    /// The device name on the instance; also the interface name inside it
    /// unless `name` says otherwise (so at most 15 characters).
    #[schema(value_type = crate::api::schemas::InterfaceName, example = "eth1")]
    pub device: String,
    /// The interface name inside the instance (default: the device name).
    #[serde(default)]
    #[schema(value_type = Option<crate::api::schemas::InterfaceName>, example = "eth1")]
    pub name: Option<String>,
}

/// Attach an instance to a managed network as a `nic` device. Answers 200
/// with the instance (or 202 with an operation when the backend applies it
/// in the background); 412 if the instance changed meanwhile.
#[utoipa::path(post, path = "", tag = "networks", operation_id = "attach_nic",
    security(("bearer" = [])),
    params(InstancePath, ProjectWaitQuery),
    request_body = AttachNic,
    responses(
        (status = 200, description = "Attached", body = Instance),
        (status = 202, description = "Attaching", body = OperationRef),
        BackendRefused400, Operator403, DeviceNameTaken409, InstanceChanged412, TooManyOperations429,
        (status = 404, description = "No such instance or network", body = Problem, content_type = "application/problem+json")))]
pub async fn attach_nic(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name: instance }): Path<InstancePath>,
    Query(q): Query<ProjectWaitQuery>,
    Json(req): Json<AttachNic>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    let network =
        NetworkName::parse(&req.network).map_err(|e| ApiError::invalid_field("network", e))?;
    let device =
        DeviceName::parse(&req.device).map_err(|e| ApiError::invalid_field("device", e))?;
    let ifname = match &req.name {
        Some(n) => DeviceName::parse(n).map_err(|e| ApiError::invalid_field("name", e))?,
        None => device.clone(),
    };
    // Both are interface names (the device's is the default one), so both
    // keep to the kernel's 15 characters, as the schema says.
    for (field, n) in [("device", &device), ("name", &ifname)] {
        if n.as_str().len() > 15 {
            return Err(ApiError::invalid_field(
                field,
                format!("`{field}` names a network interface: at most 15 characters"),
            ));
        }
    }
    // A clear 404 for a missing network, before touching the instance.
    let (net, _) = state.backend.get_network(&project, &network).await?;
    if !net.managed {
        return Err(ApiError::invalid_field(
            "network",
            format!("`{network}` is a host interface, not a managed network"),
        ));
    }
    let config = BTreeMap::from([
        ("type".to_owned(), "nic".to_owned()),
        ("network".to_owned(), network.to_string()),
        ("name".to_owned(), ifname.to_string()),
    ]);
    devices::attach(
        &state,
        &user,
        &project,
        &instance,
        &device,
        config,
        "instance.nic.attach",
        q.wait,
    )
    .await
}

fn is_nic(d: &BTreeMap<String, String>) -> bool {
    d.get("type").is_some_and(|t| t == "nic")
}

/// Detach a NIC from an instance. Answers 202 with an operation (or 200
/// with `?wait=`).
#[utoipa::path(delete, path = "/{device}", tag = "networks", operation_id = "detach_nic",
    security(("bearer" = [])),
    params(DevicePath, ProjectWaitQuery),
    responses(
        (status = 200, description = "Detached", body = Operation),
        (status = 202, description = "Detaching", body = OperationRef),
        Operator403, ProfileDevice409, InstanceChanged412, TooManyOperations429,
        (status = 404, description = "No such instance or NIC", body = Problem, content_type = "application/problem+json")))]
pub async fn detach_nic(
    user: AuthUser,
    State(state): State<AppState>,
    Path(DevicePath {
        name: instance,
        device,
    }): Path<DevicePath>,
    Query(q): Query<ProjectWaitQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    devices::detach(
        &state,
        &user,
        &project,
        &instance,
        &device,
        "NIC",
        is_nic,
        "instance.nic.detach",
        q.wait,
    )
    .await
}
