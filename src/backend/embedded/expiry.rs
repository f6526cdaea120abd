//! Instance snapshots, backups and volume snapshots past their `expires_at`
//! are deleted, as Incus deletes them: by a task of the backend's own that
//! sleeps until the next one is due (an hour at most, so that one written
//! behind lxgate's back is found too) and is woken when a new one is
//! recorded. Each deletion is the ordinary delete operation (it takes the
//! instance's or volume's lock and emits its events); the task waits for it
//! before going on.

use std::sync::{Arc, Weak};
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Notify;

use super::EmbeddedBackend;
use crate::backend::{Backups, Snapshots, VolumeSnapshots};
use crate::db::embedded as inv;
use crate::names::{BackupName, InstanceName, PoolName, ProjectName, SnapshotName, VolumeName};

/// `expires_at` of what never expires (Incus's zero time).
pub(super) const NEVER: &str = "0001-01-01T00:00:00Z";

/// The longest the task sleeps without a reason.
const RESCAN_EVERY: Duration = Duration::from_secs(3600);
/// How long one deletion may take before the task moves on.
const DELETE_TIMEOUT: Duration = Duration::from_secs(600);

/// One thing that expires.
enum Expiring {
    Snapshot(ProjectName, InstanceName, SnapshotName),
    Backup(ProjectName, InstanceName, BackupName),
    VolumeSnapshot(ProjectName, PoolName, VolumeName, SnapshotName),
}

/// When `at` (RFC 3339) is; `None` for what cannot be read (kept: better a
/// snapshot too many than one deleted by mistake).
fn when(at: &str) -> Option<OffsetDateTime> {
    // The zero time however written (`0001-01-01T00:00:00.000Z`) is never.
    OffsetDateTime::parse(at, &Rfc3339)
        .ok()
        .filter(|t| t.year() > 1)
}

impl EmbeddedBackend {
    /// Starts the expiry task; it ends when the backend is dropped.
    pub fn spawn_expiry(backend: &Arc<Self>) {
        let (weak, wake): (Weak<Self>, Arc<Notify>) =
            (Arc::downgrade(backend), backend.expiry_wake.clone());
        tokio::spawn(async move {
            loop {
                let Some(backend) = weak.upgrade() else { break };
                let next = backend.expire_due().await;
                drop(backend);
                let sleep = next
                    .map(|at| {
                        let left = at - OffsetDateTime::now_utc();
                        Duration::try_from(left).unwrap_or(Duration::ZERO)
                    })
                    .unwrap_or(RESCAN_EVERY)
                    .min(RESCAN_EVERY);
                tokio::select! {
                    () = tokio::time::sleep(sleep) => {}
                    () = wake.notified() => {}
                }
            }
        });
    }

    /// Something that expires was recorded: the task looks again.
    pub(super) fn expiry_changed(&self) {
        self.expiry_wake.notify_one();
    }

    /// Deletes what is due; when the next one is.
    async fn expire_due(&self) -> Option<OffsetDateTime> {
        let now = OffsetDateTime::now_utc();
        let (due, next) = match self.expiring().await {
            Ok(all) => {
                let mut next: Option<OffsetDateTime> = None;
                let mut due = Vec::new();
                for (at, what) in all {
                    if at <= now {
                        due.push(what);
                    } else {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
                (due, next)
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing what expires failed");
                return None;
            }
        };
        for what in due {
            let op = match &what {
                Expiring::Snapshot(p, i, s) => self.delete_snapshot(p, i, s).await,
                Expiring::Backup(p, i, b) => self.delete_backup(p, i, b).await,
                Expiring::VolumeSnapshot(p, pool, v, s) => {
                    self.delete_volume_snapshot(p, pool, v, s).await
                }
            };
            let done = match op {
                Ok(op) => self.ops.wait(&op.id, DELETE_TIMEOUT).await.map(|op| op.err),
                Err(e) => Err(e),
            };
            match done {
                Ok(err) if err.is_empty() => {}
                Ok(err) => {
                    tracing::warn!(error = %err, "deleting an expired snapshot or backup failed")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "deleting an expired snapshot or backup failed")
                }
            }
        }
        next
    }

    /// Everything that expires, with when.
    async fn expiring(&self) -> Result<Vec<(OffsetDateTime, Expiring)>, sqlx::Error> {
        let mut out = Vec::new();
        for row in inv::list_instances(&self.pool, None).await? {
            let (Ok(p), Ok(i)) = (
                ProjectName::parse(&row.project),
                InstanceName::parse(&row.name),
            ) else {
                continue;
            };
            let (snaps, backups) = self.expiring_of(&row).await;
            for (name, at) in snaps {
                if let (Some(at), Ok(s)) = (when(&at), SnapshotName::parse(&name)) {
                    out.push((at, Expiring::Snapshot(p.clone(), i.clone(), s)));
                }
            }
            for (name, at) in backups {
                if let (Some(at), Ok(b)) = (when(&at), BackupName::parse(&name)) {
                    out.push((at, Expiring::Backup(p.clone(), i.clone(), b)));
                }
            }
        }
        for r in inv::expiring_volume_snapshots(&self.pool, NEVER).await? {
            let names = (
                ProjectName::parse(&r.project),
                PoolName::parse(&r.pool),
                VolumeName::parse(&r.volume),
                SnapshotName::parse(&r.name),
            );
            if let (Some(at), (Ok(p), Ok(pool), Ok(v), Ok(s))) = (when(&r.expires_at), names) {
                out.push((at, Expiring::VolumeSnapshot(p, pool, v, s)));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_and_unreadable_times_are_kept() {
        assert!(when(NEVER).is_none());
        assert!(when("0001-01-01T00:00:00.000+00:00").is_none());
        assert!(when("2030-01-01T00:00:00Z").is_some());
        assert!(when("soon").is_none());
    }
}
