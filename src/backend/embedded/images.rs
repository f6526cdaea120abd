//! The image store: Incus split-format images (metadata tarball + rootfs
//! tarball or qcow2 disk) kept under `DATA_DIR/images/<sha256>/`, one copy per
//! fingerprint however many projects hold it; which project holds what is
//! in the database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sqlx::AnyPool;

use super::process::run;
use crate::backend::BackendError;
use crate::backend::types::{Image, ImageAlias, ImageAliasesEntry, ImageUpload};
use crate::db::embedded::{self as inv, AliasRow, ImageRow};

/// `metadata.yaml` as lxgate reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Metadata {
    pub architecture: String,
    pub creation_date: i64,
    pub properties: BTreeMap<String, String>,
}

pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn path(&self, fp: &str) -> PathBuf {
        self.dir.join(fp)
    }

    pub fn rootfs(&self, fp: &str) -> PathBuf {
        self.path(fp).join("rootfs")
    }

    pub fn metadata(&self, fp: &str) -> PathBuf {
        self.path(fp).join("metadata")
    }

    /// Moves an upload's spooled files into the store (a rename: the spool
    /// lives under DATA_DIR too). Returns false when the files were already there.
    pub async fn take_upload(&self, up: &ImageUpload) -> Result<bool, BackendError> {
        let dir = self.path(&up.fingerprint);
        if tokio::fs::try_exists(dir.join("rootfs"))
            .await
            .unwrap_or(false)
        {
            return Ok(false);
        }
        let staging = self
            .dir
            .join(format!(".incoming-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::create_dir_all(&staging).await.map_err(io)?;
        let moved = async {
            move_file(&up.metadata, &staging.join("metadata")).await?;
            move_file(&up.rootfs, &staging.join("rootfs")).await?;
            tokio::fs::rename(&staging, &dir).await
        }
        .await;
        if let Err(e) = moved {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            // Another upload of the same image won the race: fine.
            if tokio::fs::try_exists(dir.join("rootfs"))
                .await
                .unwrap_or(false)
            {
                return Ok(false);
            }
            return Err(io(e));
        }
        Ok(true)
    }

    /// Reads `metadata.yaml` out of the stored metadata tarball.
    pub async fn read_metadata(&self, fp: &str) -> Result<Metadata, BackendError> {
        let tarball = self.metadata(fp);
        for member in ["metadata.yaml", "./metadata.yaml"] {
            let out = run(
                "tar",
                [
                    "--extract".as_ref(),
                    "--to-stdout".as_ref(),
                    "--file".as_ref(),
                    tarball.as_os_str(),
                    member.as_ref(),
                ],
                Duration::from_secs(60),
            )
            .await;
            if let Ok(out) = out {
                return serde_yaml_ng::from_str(&out.stdout).map_err(|e| {
                    BackendError::BadRequest(format!("metadata.yaml is not valid: {e}"))
                });
            }
        }
        Err(BackendError::BadRequest(
            "the metadata tarball holds no metadata.yaml".into(),
        ))
    }

    pub async fn remove(&self, fp: &str) -> Result<(), BackendError> {
        match tokio::fs::remove_dir_all(self.path(fp)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }
}

async fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    if tokio::fs::rename(from, to).await.is_ok() {
        return Ok(());
    }
    // Another file system: copy (on the blocking pool), then remove.
    tokio::fs::copy(from, to).await?;
    tokio::fs::remove_file(from).await
}

fn io(e: std::io::Error) -> BackendError {
    BackendError::Internal(anyhow::anyhow!("image store: {e}"))
}

pub fn db(e: sqlx::Error) -> BackendError {
    BackendError::Internal(anyhow::anyhow!("inventory: {e}"))
}

/// The one image of `project` whose fingerprint starts with `prefix`.
pub async fn find(pool: &AnyPool, project: &str, prefix: &str) -> Result<ImageRow, BackendError> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BackendError::NotFound("Image not found".into()));
    }
    let mut rows = inv::find_images(pool, project, &prefix.to_ascii_lowercase())
        .await
        .map_err(db)?;
    match rows.len() {
        0 => Err(BackendError::NotFound("Image not found".into())),
        1 => Ok(rows.remove(0)),
        _ => Err(BackendError::BadRequest(
            "More than one image matches this fingerprint prefix".into(),
        )),
    }
}

/// The API object for a stored image.
pub async fn to_image(pool: &AnyPool, row: &ImageRow) -> Result<Image, BackendError> {
    let aliases = inv::list_aliases(pool, &row.project)
        .await
        .map_err(db)?
        .into_iter()
        .filter(|a| a.target == row.fingerprint)
        .map(|a| ImageAlias {
            name: a.name,
            description: a.description,
        })
        .collect();
    Ok(Image {
        fingerprint: row.fingerprint.clone(),
        aliases,
        architecture: row.architecture.clone(),
        created_at: row.created_at.clone(),
        uploaded_at: row.uploaded_at.clone(),
        last_used_at: row.uploaded_at.clone(),
        filename: row.filename.clone(),
        project: row.project.clone(),
        properties: serde_json::from_str(&row.properties).unwrap_or_default(),
        public: row.public != 0,
        size: row.size,
        image_type: row.image_type.clone(),
        ..Default::default()
    })
}

pub fn to_alias(row: &AliasRow, image_type: &str) -> ImageAliasesEntry {
    ImageAliasesEntry {
        name: row.name.clone(),
        description: row.description.clone(),
        target: row.target.clone(),
        alias_type: image_type.to_owned(),
    }
}

/// `creation_date` (unix seconds) as RFC 3339.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
