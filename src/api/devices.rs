//! Attaching and detaching instance devices (volumes as `disk` devices,
//! network interfaces as `nic` devices), shared by the storage and network
//! endpoints.
//!
//! Both read the instance first and send its ETag back as `If-Match`, so a
//! concurrent change to the instance is never silently overwritten (412).

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};

use crate::api::Json;
use crate::api::operation::{OperationSlot, accepted};
use crate::api::policy::{self, Shape};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::backend::types::{DevicesMap, Instance, InstanceUpdate};
use crate::error::{ApiError, ApiResult};
use crate::names::{DeviceName, InstanceName, ProjectName};

/// Adds `device` to the instance's own devices (the existing ones are sent
/// back unchanged) with PATCH + If-Match. Answers 200 with the instance, or
/// 202 / `?wait=` when the backend changes it in the background.
#[expect(clippy::too_many_arguments)]
pub async fn attach(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    instance: &InstanceName,
    device: &DeviceName,
    config: BTreeMap<String, String>,
    action: &str,
    wait: Option<u64>,
) -> ApiResult<Response> {
    let (current, etag) = state.backend.get_instance(project, instance).await?;
    if current.devices.contains_key(device.as_str())
        || current.expanded_devices.contains_key(device.as_str())
    {
        return Err(ApiError::conflict(
            "device_exists",
            format!("instance `{instance}` already has a device named `{device}`"),
        )
        .with_field("device"));
    }
    let mut devices = current.devices.clone();
    devices.insert(device.as_str().to_owned(), config);
    check(state, user, project, &current, &devices).await?;
    let update = InstanceUpdate {
        devices: Some(devices),
        ..Default::default()
    };
    let slot = OperationSlot::acquire(state, user)?;
    let op = state
        .backend
        .update_instance(project, instance, &update, etag.as_deref(), false)
        .await?;
    finish(state, slot, project, instance, action, op, wait).await
}

/// Removes the instance's own device `device` if `is_kind` accepts it, with a
/// full PUT of the instance (PATCH cannot remove a device) + If-Match.
#[expect(clippy::too_many_arguments)]
pub async fn detach(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    instance: &InstanceName,
    device: &DeviceName,
    kind: &str,
    is_kind: fn(&BTreeMap<String, String>) -> bool,
    action: &str,
    wait: Option<u64>,
) -> ApiResult<Response> {
    let (current, etag) = state.backend.get_instance(project, instance).await?;
    let mut devices = current.devices.clone();
    match devices.get(device.as_str()) {
        Some(d) if is_kind(d) => {}
        Some(_) => {
            return Err(ApiError::not_found(
                "device_not_found",
                format!("device `{device}` of instance `{instance}` is not a {kind}"),
            ));
        }
        None if current.expanded_devices.contains_key(device.as_str()) => {
            return Err(ApiError::conflict(
                "device_from_profile",
                format!(
                    "device `{device}` of instance `{instance}` comes from a profile; change the profile instead"
                ),
            ));
        }
        None => {
            return Err(ApiError::not_found(
                "device_not_found",
                format!("instance `{instance}` has no device named `{device}`"),
            ));
        }
    }
    devices.remove(device.as_str());
    // Taking a device away may let a profile's device of that name apply.
    check(state, user, project, &current, &devices).await?;
    let update = InstanceUpdate {
        description: Some(current.description),
        config: Some(current.config),
        devices: Some(devices),
        profiles: Some(current.profiles),
        ephemeral: Some(current.ephemeral),
    };
    let slot = OperationSlot::acquire(state, user)?;
    let op = state
        .backend
        .update_instance(project, instance, &update, etag.as_deref(), true)
        .await?;
    finish(state, slot, project, instance, action, op, wait).await
}

/// The instance policy for a change of `current`'s devices to `devices`.
async fn check(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    current: &Instance,
    devices: &DevicesMap,
) -> ApiResult<()> {
    let policy = policy::for_caller(state, user, project).await?;
    let after = Shape {
        devices,
        ..Shape::of(current)
    };
    policy::check_instance_write(
        state,
        user,
        &policy,
        project,
        Some(Shape::of(current)),
        after,
    )
    .await
}

async fn finish(
    state: &AppState,
    slot: OperationSlot,
    project: &ProjectName,
    instance: &InstanceName,
    action: &str,
    op: Option<crate::backend::types::Operation>,
    wait: Option<u64>,
) -> ApiResult<Response> {
    match op {
        Some(op) => {
            accepted(
                state,
                slot,
                project.as_str(),
                action,
                Some(instance.as_str()),
                op,
                wait,
            )
            .await
        }
        None => {
            let (instance, _) = state.backend.get_instance(project, instance).await?;
            Ok(Json(instance).into_response())
        }
    }
}
