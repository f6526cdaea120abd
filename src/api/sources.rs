//! What a new instance is made from (`InstanceCreate.source`), checked
//! before any backend hears of it: a local image, an image on a remote
//! server (under the fetch rules of `image_source`), a copy of an instance
//! or snapshot the caller may operate, or nothing (an empty VM).
//!
//! A copy is resolved here: the source's config, devices and profiles go
//! into the request under the request's own. The instance policy then
//! judges exactly what the backend is asked to make, so a copy cannot carry
//! into a project what the caller could not write there (a privileged
//! container of an admin's, a key an admin widened in another project).

use crate::api::image_source::{check_protocol, check_remote_alias, check_server};
use crate::api::policy;
use crate::api::resource::check_image_source;
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::{ConfigMap, DevicesMap, InstanceCreate};
use crate::config::BackendKind;
use crate::error::{ApiError, ApiResult};
use crate::fetch::Fetcher;
use crate::names::{ImageAliasName, InstanceName, ProjectName, SnapshotName};

/// The source's fields that are given (`name`, given?) and must not be,
/// for source type `kind`: 422 naming the first.
fn refuse_stray(kind: &str, fields: &[(&str, bool)]) -> ApiResult<()> {
    match fields.iter().find(|(_, given)| *given) {
        Some((name, _)) => Err(ApiError::invalid_field(
            &format!("source.{name}"),
            format!("source.{name} does not go with source.type `{kind}`"),
        )),
        None => Ok(()),
    }
}

/// Checks `req.source` for a create in `project` and, for a copy, merges
/// the source into `req` (see the module's comment).
pub async fn resolve(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    req: &mut InstanceCreate,
) -> ApiResult<()> {
    let s = &req.source;
    let kind = s.kind.as_str();
    match kind {
        "image" => {
            refuse_stray(
                kind,
                &[
                    ("source", s.source.is_some()),
                    ("project", s.project.is_some()),
                ],
            )?;
            let (alias, fingerprint) = (s.alias.as_deref(), s.fingerprint.as_deref());
            match (&s.server, &s.protocol) {
                (Some(server), Some(protocol)) => {
                    check_protocol(protocol, "source.protocol")?;
                    check_image_source(alias, fingerprint, check_remote_alias)?;
                    let fetch = Fetcher::new(state.config.image_server_allowlist.clone());
                    check_server(server, &fetch).await?;
                    vouched_for(state, user, server)
                }
                (Some(_), None) => Err(ApiError::invalid_field(
                    "source.protocol",
                    "source.protocol (`simplestreams` or `incus`) goes with source.server",
                )),
                (None, Some(_)) => Err(ApiError::invalid_field(
                    "source.server",
                    "source.server goes with source.protocol",
                )),
                (None, None) => check_image_source(alias, fingerprint, |a| {
                    ImageAliasName::parse(a)
                        .map(drop)
                        .map_err(|e| ApiError::invalid_field("source.alias", e))
                }),
            }
        }
        "copy" => {
            refuse_stray(
                kind,
                &[
                    ("alias", s.alias.is_some()),
                    ("fingerprint", s.fingerprint.is_some()),
                    ("server", s.server.is_some()),
                    ("protocol", s.protocol.is_some()),
                ],
            )?;
            merge_copy(state, user, project, req).await
        }
        "none" => {
            refuse_stray(
                kind,
                &[
                    ("alias", s.alias.is_some()),
                    ("fingerprint", s.fingerprint.is_some()),
                    ("server", s.server.is_some()),
                    ("protocol", s.protocol.is_some()),
                    ("source", s.source.is_some()),
                    ("project", s.project.is_some()),
                ],
            )?;
            if req.instance_type.as_deref() != Some("virtual-machine") {
                return Err(ApiError::invalid_field(
                    "type",
                    "source.type `none` makes an empty virtual machine: type must be `virtual-machine`",
                ));
            }
            Ok(())
        }
        _ => Err(ApiError::invalid_field(
            "source.type",
            "source.type must be `image`, `copy` or `none`",
        )),
    }
}

/// Incus fetches a remote image itself: it resolves the name again (a DNS
/// answer can change after lxgate's check) and follows redirects, so the
/// fetch rules hold only as far as lxgate's own check. There, non-admins
/// launch only from servers an admin named in `IMAGE_SERVER_ALLOWLIST`;
/// the embedded backend pins the checked addresses and keeps redirects on
/// the origin, so any public server is fine.
fn vouched_for(state: &AppState, user: &AuthUser, server: &str) -> ApiResult<()> {
    if user.is_admin() || state.config.backend != BackendKind::Incus {
        return Ok(());
    }
    let listed = reqwest::Url::parse(server).ok().is_some_and(|u| {
        u.host_str().is_some_and(|h| {
            u.port_or_known_default()
                .is_some_and(|p| state.config.image_server_allowlist.allows(h, p))
        })
    });
    if listed {
        return Ok(());
    }
    Err(ApiError::policy_denied("on the Incus backend, non-admins launch from remote image servers on IMAGE_SERVER_ALLOWLIST only (Incus fetches by itself, outside lxgate's address checks); ask an admin to list the server or copy the image (POST images)",
    )
    .with_field("source.server"))
}

/// A copy: the caller operates the source's project too; the new instance
/// gets the source's type, its config (without `volatile.*`, which is the
/// backend's), devices and profiles, the request's over them.
async fn merge_copy(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    req: &mut InstanceCreate,
) -> ApiResult<()> {
    let from = req.source.source.as_deref().ok_or_else(|| {
        ApiError::invalid_field(
            "source.source",
            "a copy needs source.source: `instance` or `instance/snapshot`",
        )
    })?;
    let bad_source = |e: String| ApiError::invalid_field("source.source", e);
    let (instance, snapshot) = match from.split_once('/') {
        Some((i, s)) => (
            InstanceName::parse(i).map_err(bad_source)?,
            Some(SnapshotName::parse(s).map_err(bad_source)?),
        ),
        None => (InstanceName::parse(from).map_err(bad_source)?, None),
    };
    let from_project = match &req.source.project {
        Some(p) => {
            ProjectName::parse(p).map_err(|e| ApiError::invalid_field("source.project", e))?
        }
        None => project.clone(),
    };
    user.require(Permission::ProjectOperate, from_project.as_str())?;
    // Copying is reaching: never of another's instance in an owner-only project.
    crate::api::ownership::require_owner(
        state,
        user,
        from_project.as_str(),
        instance.as_str(),
        crate::api::ownership::Reach::Act,
    )
    .await?;
    let (source, _) = state.backend.get_instance(&from_project, &instance).await?;
    // A copy holds the source's files: those of a privileged container
    // are the admins' (as exec and file transfer there are), whatever the
    // copy's own config would be.
    policy::refuse_privileged(user, &source, "copy it")?;
    let (config, devices, profiles) = match &snapshot {
        Some(snap) => {
            let s = state
                .backend
                .get_snapshot(&from_project, &instance, snap)
                .await?;
            // A snapshot of the time it was privileged holds files of that
            // time, whatever the container is now.
            if !user.is_admin()
                && (policy::is_privileged(&s.expanded_config) || policy::is_privileged(&s.config))
            {
                return Err(ApiError::policy_denied(format!(
                        "snapshot `{instance}/{snap}` is of a privileged container (its root was the host's root): only admins may copy it"
                    ),
                )
                .with_field("security.privileged"));
            }
            (s.config, s.devices, s.profiles)
        }
        None => (source.config, source.devices, source.profiles),
    };
    match &req.instance_type {
        Some(t) if *t != source.instance_type => {
            return Err(ApiError::invalid_field(
                "type",
                format!(
                    "the source is a {}; a copy is of the same type",
                    source.instance_type
                ),
            ));
        }
        _ => req.instance_type = Some(source.instance_type),
    }
    let mut merged: ConfigMap = config
        .into_iter()
        .filter(|(k, _)| !k.starts_with("volatile."))
        .collect();
    merged.extend(std::mem::take(&mut req.config));
    req.config = merged;
    let mut merged: DevicesMap = devices;
    merged.extend(std::mem::take(&mut req.devices));
    req.devices = merged;
    if req.profiles.is_none() {
        req.profiles = Some(profiles);
    }
    // What the backend is told to copy: names as checked.
    req.source.source = Some(match &snapshot {
        Some(s) => format!("{instance}/{s}"),
        None => instance.to_string(),
    });
    req.source.project = Some(from_project.to_string());
    Ok(())
}
