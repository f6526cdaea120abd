//! `/1.0/storage-pools` and their custom volumes on Incus.

use reqwest::Method;
use serde_json::json;

use super::IncusBackend;
use super::instances::last_segment;
use crate::backend::types::{
    Operation, StoragePool, StoragePoolCreate, StoragePoolUpdate, StorageVolume,
    StorageVolumeCreate, StorageVolumeUpdate, VolumeCopy,
};
use crate::backend::{BackendError, Listing, Missing, ReportMissing, Storage};
use crate::names::{MemberName, PoolName, ProjectName, VolumeName};

fn recursion(expand: bool) -> (&'static str, &'static str) {
    ("recursion", if expand { "1" } else { "0" })
}

/// Typed list or names from a `?recursion=` listing.
pub(super) async fn listing<T: serde::de::DeserializeOwned>(
    backend: &IncusBackend,
    segments: &[&str],
    query: &[(&str, &str)],
    expand: bool,
) -> Result<Listing<T>, BackendError> {
    if expand {
        let (items, _): (Vec<T>, _) = backend.client.query_struct(segments, query).await?;
        Ok(Listing::Full(items))
    } else {
        let (urls, _): (Vec<String>, _) = backend.client.query_struct(segments, query).await?;
        Ok(Listing::Names(
            urls.iter().map(|u| last_segment(u)).collect(),
        ))
    }
}

/// Every object of a listing (`?recursion=1`), for `ListCache` to keep.
pub(super) async fn everything<T: serde::de::DeserializeOwned>(
    backend: &IncusBackend,
    segments: &[&str],
    query: &[(&str, &str)],
) -> Result<Vec<T>, BackendError> {
    let mut q = query.to_vec();
    q.push(("recursion", "1"));
    let (items, _): (Vec<T>, _) = backend.client.query_struct(segments, &q).await?;
    Ok(items)
}

/// A listing answered from a kept list.
pub(super) fn from_kept<T: Clone>(
    kept: &[T],
    expand: bool,
    name: impl Fn(&T) -> &str,
) -> Listing<T> {
    if expand {
        Listing::Full(kept.to_vec())
    } else {
        Listing::Names(kept.iter().map(|t| name(t).to_owned()).collect())
    }
}

/// A volume's 404: Incus's words say which of the project, the pool or the
/// volume it lacks.
fn volume<'a>(pool: &'a str, name: &'a str) -> impl FnOnce(String) -> Missing + 'a {
    move |reason| Missing::Volume {
        pool: pool.to_owned(),
        name: name.to_owned(),
        reason,
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, BackendError> {
    serde_json::to_value(v).map_err(|e| anyhow::Error::from(e).into())
}

/// `?project=`, and `?target=` for a placement on a cluster member.
fn placed<'a>(project: &'a str, target: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    let mut q = vec![("project", project)];
    q.extend(target.map(|t| ("target", t)));
    q
}

#[async_trait::async_trait]
impl Storage for IncusBackend {
    async fn list_storage_pools(&self, expand: bool) -> Result<Listing<StoragePool>, BackendError> {
        listing(self, &["storage-pools"], &[recursion(expand)], expand).await
    }

    async fn get_storage_pool(
        &self,
        pool: &PoolName,
    ) -> Result<(StoragePool, Option<String>), BackendError> {
        self.client
            .query_struct(&["storage-pools", pool], &[])
            .await
            .missing(|| Missing::pool(pool))
    }

    async fn create_storage_pool(&self, req: &StoragePoolCreate) -> Result<(), BackendError> {
        let body = to_value(req)?;
        self.client
            .query(Method::POST, &["storage-pools"], &[], Some(&body), None)
            .await
            .map(|_| ())
    }

    async fn update_storage_pool(
        &self,
        pool: &PoolName,
        update: &StoragePoolUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError> {
        let body = to_value(update)?;
        let method = if replace { Method::PUT } else { Method::PATCH };
        self.client
            .query(method, &["storage-pools", pool], &[], Some(&body), if_match)
            .await
            .missing(|| Missing::pool(pool))
            .map(|_| ())
    }

    async fn delete_storage_pool(&self, pool: &PoolName) -> Result<(), BackendError> {
        self.client
            .query(Method::DELETE, &["storage-pools", pool], &[], None, None)
            .await
            .missing(|| Missing::pool(pool))
            .map(|_| ())
    }

    async fn list_volumes(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        expand: bool,
    ) -> Result<Listing<StorageVolume>, BackendError> {
        let segments = ["storage-pools", pool, "volumes", "custom"];
        let in_project = [("project", project.as_str())];
        let all = everything(self, &segments, &in_project);
        if let Some(kept) = self.lists.volumes(project, pool, all).await {
            return Ok(from_kept(&kept?, expand, |v| &v.name));
        }
        listing(
            self,
            &segments,
            &[recursion(expand), ("project", project)],
            expand,
        )
        .await
    }

    async fn get_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        name: &VolumeName,
    ) -> Result<(StorageVolume, Option<String>), BackendError> {
        self.client
            .query_struct(
                &["storage-pools", pool, "volumes", "custom", name],
                &[("project", project)],
            )
            .await
            .missing_as(volume(pool, name))
    }

    async fn create_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        req: &StorageVolumeCreate,
        target: Option<&MemberName>,
    ) -> Result<Option<Operation>, BackendError> {
        let target = self.placement(target).await?;
        let body = json!({
            "name": req.name,
            "type": "custom",
            "content_type": req.content_type.as_deref().unwrap_or("filesystem"),
            "description": req.description,
            "config": req.config,
        });
        let r = self
            .client
            .query(
                Method::POST,
                &["storage-pools", pool, "volumes", "custom"],
                &placed(project, target.as_deref()),
                Some(&body),
                None,
            )
            .await?;
        r.into_maybe_operation(project)
    }

    async fn update_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        name: &VolumeName,
        update: &StorageVolumeUpdate,
        if_match: Option<&str>,
    ) -> Result<(), BackendError> {
        let body = to_value(update)?;
        self.client
            .query(
                Method::PATCH,
                &["storage-pools", pool, "volumes", "custom", name],
                &[("project", project)],
                Some(&body),
                if_match,
            )
            .await
            .missing_as(volume(pool, name))
            .map(|_| ())
    }

    async fn delete_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        name: &VolumeName,
    ) -> Result<Option<Operation>, BackendError> {
        let r = self
            .client
            .query(
                Method::DELETE,
                &["storage-pools", pool, "volumes", "custom", name],
                &[("project", project)],
                None,
                None,
            )
            .await
            .missing_as(volume(pool, name))?;
        r.into_maybe_operation(project)
    }

    /// `volume_only`: the copy starts without snapshots on both backends.
    async fn copy_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        req: &VolumeCopy,
        target: Option<&MemberName>,
    ) -> Result<Operation, BackendError> {
        let target = self.placement(target).await?;
        // Incus names a snapshot source `volume/snapshot`.
        let source = match &req.source_snapshot {
            Some(snap) => format!("{}/{snap}", req.source_volume),
            None => req.source_volume.to_string(),
        };
        let body = json!({
            "name": req.name.as_str(),
            "type": "custom",
            "content_type": req.content_type,
            "description": req.description,
            "config": req.config,
            "source": {
                "type": "copy",
                "name": source,
                "pool": req.source_pool.as_str(),
                "volume_only": true,
            },
        });
        // The caller has read the source: a 404 is about the target pool.
        self.client
            .query_operation(
                Method::POST,
                &["storage-pools", pool, "volumes", "custom"],
                &placed(project, target.as_deref()),
                Some(&body),
                None,
            )
            .await
            .missing(|| Missing::pool(pool))
    }
}
