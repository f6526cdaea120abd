//! What a killed lxgate left half done, finished when it starts again,
//! before it serves anything (one lxgate per `DATA_DIR`: the embedded
//! backend drives the one host it runs on).
//!
//! Each change is ordered so that a kill at any point leaves something this
//! can recognise and finish:
//!
//! * An instance's row is written first (phase `creating`) and turns `ready`
//!   once its files are made; a delete marks it `deleting` before its files
//!   go. A row that is not `ready` here is a create or a delete that never
//!   ended: its files (whatever part of them was made) and its row go, as a
//!   failed create or a finished delete would have left it.
//! * A snapshot is its data (a container's `snapshots/<name>/`, a VM's
//!   internal qcow2 snapshot) plus its record `snapshots/<name>.json`,
//!   written last and removed first. Data without a record is removed; a
//!   record without data too.
//! * A container's restore builds `rootfs.restoring`, moves `rootfs` to
//!   `rootfs.old` and the new one in: whichever step it stopped at, the
//!   container gets a whole rootfs back.
//! * A rename gives the row its new name first (phase `renaming`, the old
//!   name kept beside it), then moves the directory, then rewrites a
//!   container's config: a rename found under way is finished.
//! * Spools of image uploads, pulls and publishes are only ever half
//!   written here, and go.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::driver_types::VM;
use super::inventory::db;
use super::lxc::Lxc;
use super::process::{self, run};
use super::{EmbeddedBackend, driver_types};
use crate::db::embedded::{self as inv, InstanceRow};

/// In an instance's directory while lxgate holds it frozen for a copy.
const FROZEN_MARK: &str = ".frozen-by-lxgate";

/// Marks the instance in `dir` as frozen by lxgate (before it freezes it).
pub(super) async fn mark_frozen(dir: &Path) -> Result<(), crate::backend::BackendError> {
    tokio::fs::write(dir.join(FROZEN_MARK), b"")
        .await
        .map_err(|e| {
            crate::backend::BackendError::Internal(anyhow::anyhow!("marking a freeze: {e}"))
        })
}

/// Clears `mark_frozen`'s mark (once it is thawed).
pub(super) async fn unmark_frozen(dir: &Path) {
    let _ = tokio::fs::remove_file(dir.join(FROZEN_MARK)).await;
}

/// What one qemu-img call on a stopped VM's disk may take.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(60);

impl EmbeddedBackend {
    /// Finishes what a killed lxgate left half done (see the module).
    /// Problems are logged: the server starts whatever it could not mend.
    pub async fn recover(&self) {
        match inv::unfinished_renames(&self.pool).await.map_err(db) {
            Ok(renames) => {
                for r in renames {
                    if let Err(e) = self.finish_rename(&r.row, &r.renamed_from).await {
                        tracing::error!(project = %r.row.project, instance = %r.row.name,
                            renamed_from = %r.renamed_from, error = %e,
                            "finishing an interrupted rename failed; tried again at the next start");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "reading unfinished renames failed"),
        }
        match inv::unfinished_instances(&self.pool).await.map_err(db) {
            Ok(rows) => {
                for row in rows {
                    self.finish_unfinished(&row).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "reading unfinished instances failed"),
        }
        match inv::list_instances(&self.pool, None).await {
            Ok(rows) => {
                for row in &rows {
                    self.thaw_if_marked(row).await;
                    self.recover_snapshots(row).await;
                    if row.instance_type != VM {
                        self.recover_restore(row).await;
                    }
                }
                self.report_strays(&rows).await;
            }
            Err(e) => tracing::error!(error = %e, "listing instances for recovery failed"),
        }
        self.clear_spools().await;
    }

    /// Ends the tools a killed lxgate left working under `dir` (tar, cp in
    /// process groups of their own outlive it), so that what is removed
    /// stays removed.
    async fn end_users_of(dir: &Path) {
        let dir = dir.to_owned();
        let _ = tokio::task::spawn_blocking(move || {
            for _ in 0..20 {
                if process::kill_users_of(&dir) == 0 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            tracing::warn!(directory = %dir.display(), "processes still work there after 2 s of SIGKILL");
        })
        .await;
    }

    /// A rename that never ended goes through (as the row already says):
    /// the directory follows if it has not, then a container's config,
    /// which names its directory and its NICs' host ends.
    async fn finish_rename(
        &self,
        row: &InstanceRow,
        old_name: &str,
    ) -> Result<(), crate::backend::BackendError> {
        let new_dir = self.instance_dir(row);
        let old_dir = self.instance_dir(&InstanceRow {
            name: old_name.to_owned(),
            ..row.clone()
        });
        // Decided by the old directory (the move is one rename(2)): while it
        // is there, the files never moved, whatever is under the new name.
        let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        match (exists(&old_dir), exists(&new_dir)) {
            (true, false) => {
                tokio::fs::rename(&old_dir, &new_dir).await.map_err(|e| {
                    anyhow::anyhow!("moving {} to {}: {e}", old_dir.display(), new_dir.display())
                })?;
            }
            (true, true) => {
                // Files under the new name that are not this instance's:
                // not taken over; the instance keeps its old name.
                inv::undo_rename(&self.pool, &row.project, &row.name)
                    .await
                    .map_err(db)?;
                tracing::warn!(project = %row.project, instance = %old_name,
                    directory = %new_dir.display(),
                    "an interrupted rename was undone: its new name's directory belongs to no instance");
                return Ok(());
            }
            (false, true) => {}
            (false, false) => {
                return Err(anyhow::anyhow!(
                    "neither {} nor {} exists",
                    old_dir.display(),
                    new_dir.display()
                )
                .into());
            }
        }
        if row.instance_type != VM {
            let host = Lxc::host_name(&row.project, &row.name);
            let devices = serde_json::from_str(&row.devices).unwrap_or_default();
            let attached = self
                .attachments(&row.project, &host, &devices, false)
                .await?;
            let confinement = Self::confinement(row)?;
            let user = self.driver_config(row).await?;
            self.lxc
                .write_config(&host, &row.name, &user, &attached, &confinement)
                .await?;
        }
        // The API moves the owner record when it sees the rename end; a
        // killed lxgate saw no end.
        crate::db::instance_owners::rename(&self.pool, &row.project, old_name, &row.name)
            .await
            .map_err(db)?;
        inv::end_rename(&self.pool, &row.project, &row.name)
            .await
            .map_err(db)?;
        tracing::warn!(project = %row.project, instance = %row.name, renamed_from = %old_name,
            "finished a rename a killed lxgate left under way");
        Ok(())
    }

    /// A create or a delete that never ended: the files go, then the row.
    async fn finish_unfinished(&self, row: &InstanceRow) {
        let host = Lxc::host_name(&row.project, &row.name);
        let driver = self.driver(row);
        // A create killed after its start, or a VM's QEMU that outlived
        // lxgate: nothing may run on files about to go.
        if driver.info(&host).await.state != "STOPPED"
            && let Err(e) = driver.stop(&host, 0, true).await
        {
            tracing::error!(instance = %host, error = %e, "stopping an unfinished instance failed");
            return;
        }
        Self::end_users_of(&self.instance_dir(row)).await;
        if let Err(e) = driver.destroy(&host).await {
            tracing::error!(instance = %host, error = %e, "removing an unfinished instance's files failed");
            return;
        }
        match inv::delete_instance(&self.pool, &row.project, &row.name).await {
            Ok(()) => tracing::warn!(
                project = %row.project,
                instance = %row.name,
                "removed an instance whose create or delete lxgate did not finish (it was stopped mid-way)"
            ),
            Err(e) => {
                tracing::error!(instance = %host, error = %e, "removing an unfinished instance's row failed")
            }
        }
    }

    /// A container lxgate froze for a copy (a snapshot's, a copy's) stays
    /// frozen when lxgate is killed mid-copy; the mark tells it from one a
    /// user froze, which stays as it is.
    async fn thaw_if_marked(&self, row: &InstanceRow) {
        let dir = self.instance_dir(row);
        if tokio::fs::symlink_metadata(dir.join(FROZEN_MARK))
            .await
            .is_err()
        {
            return;
        }
        let host = Lxc::host_name(&row.project, &row.name);
        let driver = self.driver(row);
        if driver.info(&host).await.state == "FROZEN" {
            match driver.unfreeze(&host).await {
                Ok(()) => {
                    tracing::warn!(instance = %host, "thawed a container lxgate froze for a copy it did not finish")
                }
                Err(e) => {
                    tracing::error!(instance = %host, error = %e, "thawing a container failed");
                    return;
                }
            }
        }
        unmark_frozen(&dir).await;
    }

    /// Snapshot data and records that do not go together.
    async fn recover_snapshots(&self, row: &InstanceRow) {
        let dir = self.instance_dir(row).join("snapshots");
        let Ok(mut rd) = tokio::fs::read_dir(&dir).await else {
            return;
        };
        let (mut records, mut data) = (BTreeSet::new(), BTreeSet::new());
        while let Ok(Some(e)) = rd.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            match name.strip_suffix(".json") {
                Some(snap) => {
                    records.insert(snap.to_owned());
                }
                None if e.file_type().await.is_ok_and(|t| t.is_dir()) => {
                    data.insert(name);
                }
                None => {}
            }
        }
        let host = Lxc::host_name(&row.project, &row.name);
        if row.instance_type == VM {
            let Some(internal) = self.vm_snapshots(row).await else {
                return;
            };
            data = internal;
        }
        for snap in data.difference(&records) {
            let removed = if row.instance_type == VM {
                let disk = self.instance_dir(row).join("root.qcow2");
                run(
                    "qemu-img",
                    [
                        "snapshot".as_ref(),
                        "-d".as_ref(),
                        snap.as_ref(),
                        disk.as_os_str(),
                    ],
                    QEMU_IMG_TIMEOUT,
                )
                .await
                .map(drop)
            } else {
                Self::end_users_of(&dir.join(snap)).await;
                tokio::fs::remove_dir_all(dir.join(snap))
                    .await
                    .map_err(|e| crate::backend::BackendError::Internal(e.into()))
            };
            match removed {
                Ok(()) => {
                    tracing::warn!(instance = %host, snapshot = %snap, "removed a snapshot lxgate did not finish")
                }
                Err(e) => {
                    tracing::error!(instance = %host, snapshot = %snap, error = %e, "removing an unfinished snapshot failed")
                }
            }
        }
        for snap in records.difference(&data) {
            match tokio::fs::remove_file(dir.join(format!("{snap}.json"))).await {
                Ok(()) => {
                    tracing::warn!(instance = %host, snapshot = %snap, "removed the record of a snapshot whose data was gone")
                }
                Err(e) => {
                    tracing::error!(instance = %host, snapshot = %snap, error = %e, "removing a snapshot record failed")
                }
            }
        }
    }

    /// A stopped VM's internal snapshots; `None` when its disk cannot be
    /// read as it is (a running QEMU holds it).
    async fn vm_snapshots(&self, row: &InstanceRow) -> Option<BTreeSet<String>> {
        let host = Lxc::host_name(&row.project, &row.name);
        if self.driver(row).info(&host).await.state != "STOPPED" {
            return None;
        }
        let disk = self.instance_dir(row).join("root.qcow2");
        if !tokio::fs::try_exists(&disk).await.unwrap_or(false) {
            return None;
        }
        let out = super::qcow::info_json(&disk, QEMU_IMG_TIMEOUT)
            .await
            .inspect_err(
                |e| tracing::error!(instance = %host, error = %e, "reading a VM's snapshots failed"),
            )
            .ok()?;
        let info: Value = serde_json::from_str(&out).ok()?;
        Some(
            info["snapshots"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// A container's restore stopped between its steps.
    async fn recover_restore(&self, row: &InstanceRow) {
        let dir = self.instance_dir(row);
        let host = Lxc::host_name(&row.project, &row.name);
        let (rootfs, old, fresh) = (
            dir.join("rootfs"),
            dir.join("rootfs.old"),
            dir.join("rootfs.restoring"),
        );
        let exists = |p: &Path| p.symlink_metadata().is_ok();
        if exists(&old) {
            let mended = if exists(&rootfs) {
                // The new rootfs was in place: only the old one was left.
                tokio::fs::remove_dir_all(&old).await
            } else {
                // Killed between the two moves: the container's own rootfs
                // goes back (the restore did not happen).
                tokio::fs::rename(&old, &rootfs).await
            };
            match mended {
                Ok(()) => {
                    tracing::warn!(instance = %host, "finished a restore lxgate did not finish")
                }
                Err(e) => {
                    tracing::error!(instance = %host, error = %e, "mending an unfinished restore failed")
                }
            }
        }
        if exists(&fresh) {
            Self::end_users_of(&fresh).await;
        }
        if exists(&fresh)
            && let Err(e) = tokio::fs::remove_dir_all(&fresh).await
        {
            tracing::error!(instance = %host, error = %e, "removing an unfinished restore's copy failed");
        }
    }

    /// Instance directories without a row are reported, never removed: they
    /// may be the data of a database that is not this one.
    async fn report_strays(&self, rows: &[InstanceRow]) {
        let known: BTreeSet<String> = rows
            .iter()
            .map(|r| Lxc::host_name(&r.project, &r.name))
            .collect();
        for (kind, dir) in [
            ("container", self.lxc.dir("")),
            ("virtual machine", self.qemu.vm_dir("")),
        ] {
            for name in driver_types::instance_dirs(&dir).await {
                if !known.contains(&name) {
                    tracing::warn!(
                        directory = %dir.join(&name).display(),
                        "a {kind} directory that no instance in the database owns; it is left as it is"
                    );
                }
            }
        }
    }

    /// Half-written spools: uploads and pulls in `tmp/`, images being moved
    /// in or published.
    async fn clear_spools(&self) {
        let mut gone = Vec::new();
        if let Ok(mut rd) = tokio::fs::read_dir(self.data_dir.join("tmp")).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                gone.push(e.path());
            }
        }
        if let Ok(mut rd) = tokio::fs::read_dir(self.images.path("")).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".incoming-") || name.starts_with(".publishing-") {
                    gone.push(e.path());
                }
            }
        }
        for path in gone {
            Self::end_users_of(&path).await;
            let removed = match path.symlink_metadata() {
                Ok(m) if m.is_dir() => tokio::fs::remove_dir_all(&path).await,
                _ => tokio::fs::remove_file(&path).await,
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "removing a spool left by a killed lxgate failed");
            }
        }
    }
}
