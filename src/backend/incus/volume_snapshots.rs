//! `/1.0/storage-pools/{pool}/volumes/custom/{volume}/snapshots` on Incus,
//! and restoring one.

use reqwest::Method;
use serde_json::json;

use super::IncusBackend;
use super::storage::listing;
use crate::backend::types::{Operation, StorageVolumeSnapshot, StorageVolumeSnapshotCreate};
use crate::backend::{BackendError, Listing, Missing, ReportMissing, Storage, VolumeSnapshots};
use crate::names::{PoolName, ProjectName, SnapshotName, VolumeName};

/// What a snapshot that never expires says.
const NEVER: &str = "0001-01-01T00:00:00Z";

/// A snapshot as `GET .../snapshots/{snap}` shows it. Incus's list
/// (`recursion=1`) shows the same snapshot differently: `name` as
/// `volume/snap`, no `content_type`, `expires_at` null; both read alike here.
fn normalized(mut s: StorageVolumeSnapshot, content_type: &str) -> StorageVolumeSnapshot {
    if let Some((_, snap)) = s.name.rsplit_once('/') {
        s.name = snap.to_owned();
    }
    if s.content_type.is_empty() {
        s.content_type = content_type.to_owned();
    }
    if s.expires_at.is_empty() {
        s.expires_at = NEVER.to_owned();
    }
    s
}

/// A snapshot's 404, in Incus's words (which do not say whether the
/// volume or the snapshot is missing).
fn snapshot_missing<'a>(
    pool: &'a str,
    volume: &'a str,
    snap: &'a str,
) -> impl FnOnce(String) -> Missing + 'a {
    move |reason| Missing::VolumeSnapshot {
        pool: pool.to_owned(),
        volume: volume.to_owned(),
        name: snap.to_owned(),
        reason,
    }
}

/// A volume's 404, in Incus's words.
fn volume_missing<'a>(pool: &'a str, name: &'a str) -> impl FnOnce(String) -> Missing + 'a {
    move |reason| Missing::Volume {
        pool: pool.to_owned(),
        name: name.to_owned(),
        reason,
    }
}

#[async_trait::async_trait]
impl VolumeSnapshots for IncusBackend {
    async fn list_volume_snapshots(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        expand: bool,
    ) -> Result<Listing<StorageVolumeSnapshot>, BackendError> {
        let listed: Listing<StorageVolumeSnapshot> = listing(
            self,
            &[
                "storage-pools",
                pool,
                "volumes",
                "custom",
                volume,
                "snapshots",
            ],
            &[
                ("recursion", if expand { "1" } else { "0" }),
                ("project", project),
            ],
            expand,
        )
        .await
        .missing_as(volume_missing(pool, volume))?;
        Ok(match listed {
            Listing::Full(items) if items.iter().any(|s| s.content_type.is_empty()) => {
                let (v, _) = self.get_volume(project, pool, volume).await?;
                Listing::Full(
                    items
                        .into_iter()
                        .map(|s| normalized(s, &v.content_type))
                        .collect(),
                )
            }
            Listing::Full(items) => {
                Listing::Full(items.into_iter().map(|s| normalized(s, "")).collect())
            }
            names => names,
        })
    }

    async fn get_volume_snapshot(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        snap: &SnapshotName,
    ) -> Result<StorageVolumeSnapshot, BackendError> {
        let (s, _): (StorageVolumeSnapshot, _) = self
            .client
            .query_struct(
                &[
                    "storage-pools",
                    pool,
                    "volumes",
                    "custom",
                    volume,
                    "snapshots",
                    snap,
                ],
                &[("project", project)],
            )
            .await
            .missing_as(snapshot_missing(pool, volume, snap))?;
        Ok(normalized(s, ""))
    }

    async fn create_volume_snapshot(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        req: &StorageVolumeSnapshotCreate,
    ) -> Result<Operation, BackendError> {
        let body = serde_json::to_value(req).map_err(anyhow::Error::from)?;
        self.client
            .query_operation(
                Method::POST,
                &[
                    "storage-pools",
                    pool,
                    "volumes",
                    "custom",
                    volume,
                    "snapshots",
                ],
                &[("project", project)],
                Some(&body),
                None,
            )
            .await
            .missing_as(volume_missing(pool, volume))
    }

    async fn delete_volume_snapshot(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        snap: &SnapshotName,
    ) -> Result<Operation, BackendError> {
        self.client
            .query_operation(
                Method::DELETE,
                &[
                    "storage-pools",
                    pool,
                    "volumes",
                    "custom",
                    volume,
                    "snapshots",
                    snap,
                ],
                &[("project", project)],
                None,
                None,
            )
            .await
            .missing_as(snapshot_missing(pool, volume, snap))
    }

    /// Incus restores through the volume itself (`PUT` with `restore`,
    /// the rest of the body then ignored), synchronously.
    async fn restore_volume_snapshot(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        snap: &SnapshotName,
    ) -> Result<Option<Operation>, BackendError> {
        // Incus checks whether the volume is in use before whether the
        // snapshot exists: look first, so a missing one is a 404.
        self.get_volume_snapshot(project, pool, volume, snap)
            .await?;
        let r = self
            .client
            .query(
                Method::PUT,
                &["storage-pools", pool, "volumes", "custom", volume],
                &[("project", project)],
                Some(&json!({"restore": snap.as_str()})),
                None,
            )
            .await
            .missing_as(snapshot_missing(pool, volume, snap))?;
        r.into_maybe_operation(project)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_snapshots_read_like_fetched_ones() {
        let listed: StorageVolumeSnapshot = serde_json::from_value(json!({
            "config": {}, "content_type": "", "created_at": "2026-11-30T11:15:04Z",
            "description": "", "expires_at": null, "name": "data/s1"}))
        .unwrap();
        let s = normalized(listed, "filesystem");
        assert_eq!(
            (
                s.name.as_str(),
                s.content_type.as_str(),
                s.expires_at.as_str()
            ),
            ("s1", "filesystem", NEVER)
        );
        let fetched: StorageVolumeSnapshot = serde_json::from_value(json!({
            "config": {"user.a": "1"}, "content_type": "block", "created_at": "2026-11-30T11:15:04Z",
            "description": "", "expires_at": "2030-01-01T00:00:00Z", "name": "s1"}))
        .unwrap();
        let s = normalized(fetched, "");
        assert_eq!(
            (
                s.name.as_str(),
                s.content_type.as_str(),
                s.expires_at.as_str()
            ),
            ("s1", "block", "2030-01-01T00:00:00Z")
        );
    }
}
