//! The image store: Incus split-format images (metadata tarball + rootfs
//! tarball or qcow2 disk) kept under `DATA_DIR/images/<sha256>/`, one copy per
//! fingerprint however many projects hold it; which project holds what is
//! in the database.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use sha2::Digest;
use sqlx::AnyPool;
use tokio::io::AsyncReadExt;

use super::inventory::db;
use super::lxc::Lxc;
use super::operations::{self, OpError, lifecycle, resource_url};
use super::process;
use super::qemu::Boot;
use super::tarball::reading as tar_reading;
use super::{
    EmbeddedBackend, driver_types, image_budget, image_pack, image_size, resources, simplestreams,
};
use crate::backend::events::EventBus;
use crate::backend::types::{
    self, Download, Image, ImageAlias, ImageAliasesEntry, ImagePublish, ImageUpload, Operation,
    PublishFrom,
};
use crate::backend::{BackendError, Images, ListScope, Listing, Missing, ReportMissing};
use crate::db::embedded::{self as inv, AliasRow, ImageRow};
use crate::fetch::Fetcher;
use crate::names::{ImageAliasName, ImageFingerprint, ProjectName};

/// Largest `metadata.yaml` read (real ones are a few KiB). A small
/// compressed tarball can expand to gigabytes, so the cap is applied while
/// `tar` streams it out, not after.
pub(crate) const MAX_METADATA_YAML: u64 = 1 << 20;
/// How long extracting `metadata.yaml` may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(60);

/// `member` of `tarball` through `tar --to-stdout`, read with the cap; `None`
/// when the tarball has no such member. Over the cap, `tar` is killed and
/// the upload refused.
async fn extract_metadata_yaml(
    tarball: &Path,
    member: &str,
) -> Result<Option<Vec<u8>>, BackendError> {
    let mut child = tar_reading(tarball, &[])
        .await?
        .arg("--extract")
        .arg("--to-stdout")
        .arg("--")
        .arg(member)
        .stdout(Stdio::piped())
        // Only success matters ("not found" is a failure); a null stderr
        // cannot fill up and stall tar.
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("running tar: {e}")))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let read = async {
        let mut yaml = Vec::new();
        stdout
            .take(MAX_METADATA_YAML + 1)
            .read_to_end(&mut yaml)
            .await?;
        if yaml.len() as u64 > MAX_METADATA_YAML {
            // Dropping the pipe is not enough: tar would go on unpacking.
            let _ = child.kill().await;
            return Ok(Err(()));
        }
        Ok::<_, std::io::Error>(Ok((child.wait().await?, yaml)))
    };
    match tokio::time::timeout(METADATA_TIMEOUT, read).await {
        Err(_) => Err(BackendError::Timeout(format!(
            "reading metadata.yaml took over {}s",
            METADATA_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(BackendError::Internal(anyhow::anyhow!("running tar: {e}"))),
        Ok(Ok(Err(()))) => Err(BackendError::BadRequest(format!(
            "metadata.yaml is larger than {} MiB",
            MAX_METADATA_YAML >> 20
        ))),
        Ok(Ok(Ok((status, yaml)))) => Ok(status.success().then_some(yaml)),
    }
}

/// `metadata.yaml` as lxgate reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Metadata {
    pub architecture: String,
    pub creation_date: i64,
    pub properties: BTreeMap<String, String>,
    /// For kernel + initrd VM images: the file names inside the `rootfs.img`
    /// tarball and the kernel command line.
    pub boot: Option<BootMeta>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BootMeta {
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
}

/// `metadata.yaml`'s text as lxgate reads it (at most `MAX_METADATA_YAML`).
pub(crate) fn parse_metadata(yaml: &[u8]) -> Result<Metadata, BackendError> {
    serde_yaml_ng::from_slice(yaml)
        .map_err(|e| BackendError::BadRequest(format!("metadata.yaml is not valid: {e}")))
}

impl BootMeta {
    /// What goes on to `tar` (member names) and QEMU (the command line).
    pub(crate) fn check(&self) -> Result<(), BackendError> {
        if !plain_name(&self.kernel) || !plain_name(&self.initrd) || self.cmdline.len() > 4096 {
            return Err(BackendError::BadRequest(
                "metadata.yaml's boot.kernel and boot.initrd must be plain file names".into(),
            ));
        }
        Ok(())
    }
}

/// A member name of the boot tarball: a plain file name, nothing that could
/// name another place or read as an option.
fn plain_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && !n.starts_with('-')
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
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

    /// A fresh folder inside the store, only root may enter, for packing a
    /// published image (its files are then taken like an upload's).
    pub async fn publish_spool(&self) -> Result<PathBuf, BackendError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self
            .dir
            .join(format!(".publishing-{}", uuid::Uuid::new_v4().simple()));
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        let made = dir.clone();
        tokio::task::spawn_blocking(move || builder.create(&made))
            .await
            .map_err(|e| BackendError::Internal(anyhow::anyhow!("spool task: {e}")))?
            .map_err(io)?;
        Ok(dir)
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
            if let Some(yaml) = extract_metadata_yaml(&tarball, member).await? {
                return parse_metadata(&yaml);
            }
        }
        Err(BackendError::BadRequest(
            "the metadata tarball holds no metadata.yaml".into(),
        ))
    }

    /// Readies a VM image: a qcow2 `rootfs` boots as a disk; a tarball holds
    /// the kernel and initrd named in metadata.yaml's `boot`, unpacked to
    /// `boot/kernel` and `boot/initrd`. The answer is kept in `boot.json`.
    pub async fn prepare_vm(&self, fp: &str, meta: &Metadata) -> Result<Boot, BackendError> {
        let dir = self.path(fp);
        let mut head = [0u8; 4];
        {
            use tokio::io::AsyncReadExt;
            let mut f = tokio::fs::File::open(self.rootfs(fp)).await.map_err(io)?;
            let _ = f.read(&mut head).await.map_err(io)?;
        }
        let boot = if &head == b"QFI\xfb" {
            Boot::Disk
        } else {
            let b = meta.boot.as_ref().ok_or_else(|| {
                BackendError::BadRequest(
                    "a VM image's rootfs.img is a qcow2 disk, or a tarball with the kernel and initrd that metadata.yaml's `boot` names".into(),
                )
            })?;
            b.check()?;
            let staging = dir.join(".boot");
            let _ = tokio::fs::remove_dir_all(&staging).await;
            tokio::fs::create_dir_all(&staging).await.map_err(io)?;
            // Read as `image_size` measured it.
            let mut tar = tar_reading(&self.rootfs(fp), &[]).await?;
            tar.arg("--extract")
                .arg("--directory")
                .arg(&staging)
                .args(["--no-same-owner", "--"])
                .args([&b.kernel, &b.initrd]);
            process::run_group(tar, "tar", Duration::from_secs(120))
                .await
                .map_err(|_| {
                    BackendError::BadRequest(format!(
                        "rootfs.img holds no {} and {}",
                        b.kernel, b.initrd
                    ))
                })?;
            for (from, to) in [(&b.kernel, "kernel"), (&b.initrd, "initrd")] {
                let f = staging.join(from);
                let m = tokio::fs::symlink_metadata(&f).await.map_err(io)?;
                if !m.is_file() {
                    return Err(BackendError::BadRequest(format!("{from} is not a file")));
                }
                tokio::fs::rename(&f, staging.join(to)).await.map_err(io)?;
            }
            let _ = tokio::fs::remove_dir_all(dir.join("boot")).await;
            tokio::fs::rename(&staging, dir.join("boot"))
                .await
                .map_err(io)?;
            Boot::Kernel {
                cmdline: if b.cmdline.is_empty() {
                    "console=ttyS0".into()
                } else {
                    b.cmdline.clone()
                },
            }
        };
        let raw = serde_json::to_vec(&boot).map_err(|e| BackendError::Internal(e.into()))?;
        tokio::fs::write(dir.join("boot.json"), raw)
            .await
            .map_err(io)?;
        Ok(boot)
    }

    pub async fn boot(&self, fp: &str) -> Result<Boot, BackendError> {
        let raw = tokio::fs::read(self.path(fp).join("boot.json"))
            .await
            .map_err(io)?;
        serde_json::from_slice(&raw).map_err(|e| BackendError::Internal(e.into()))
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

/// The one image of `project` whose fingerprint starts with `prefix`.
pub async fn find(pool: &AnyPool, project: &str, prefix: &str) -> Result<ImageRow, BackendError> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BackendError::NotFound(Missing::image(prefix)));
    }
    let mut rows = inv::find_images(pool, project, &prefix.to_ascii_lowercase())
        .await
        .map_err(db)?;
    match rows.len() {
        0 => Err(BackendError::NotFound(Missing::image(prefix))),
        1 => Ok(rows.remove(0)),
        _ => Err(BackendError::BadRequest(
            "More than one image matches this fingerprint prefix".into(),
        )),
    }
}

/// The API object for a stored image.
/// The API object for a stored image; `aliases` are its project's (read
/// once per listing, not once per image).
pub fn to_image(row: &ImageRow, aliases: &[AliasRow]) -> Image {
    let aliases = aliases
        .iter()
        .filter(|a| a.target == row.fingerprint)
        .map(|a| ImageAlias {
            name: a.name.clone(),
            description: a.description.clone(),
        })
        .collect();
    Image {
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
    }
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

/// The conflict of a second row for an image a project has.
const IMAGE_EXISTS: &str = "Image already exists";

/// Registers stored image files in a project: reads metadata.yaml, readies a
/// VM image, writes the row and aliases, announces it. On failure nothing
/// half-made stays (the row, its aliases, and files no project holds).
pub async fn register(
    pool: &AnyPool,
    store: &ImageStore,
    bus: &EventBus,
    project: &str,
    up: &ImageUpload,
    fresh: bool,
) -> Result<serde_json::Value, OpError> {
    let project_owned = project.to_owned();
    let fp = up.fingerprint.clone();
    let result = async {
        let meta = store.read_metadata(&fp).await?;
        let image_type = if up.virtual_machine {
            store.prepare_vm(&fp, &meta).await?;
            "virtual-machine"
        } else {
            "container"
        };
        if !meta.architecture.is_empty()
            && !matches!(meta.architecture.as_str(), "x86_64" | "amd64")
        {
            return Err(BackendError::BadRequest(format!(
                "the image is for {}, this host runs x86_64",
                meta.architecture
            )));
        }
        let now = operations::now();
        let row = inv::ImageRow {
            project: project_owned.clone(),
            fingerprint: fp.clone(),
            image_type: image_type.into(),
            architecture: "x86_64".into(),
            size: (up.metadata_size + up.rootfs_size) as i64,
            filename: up.rootfs_name.clone(),
            properties: serde_json::to_string(&meta.properties).unwrap_or_else(|_| "{}".into()),
            public: i64::from(up.public),
            created_at: if meta.creation_date > 0 {
                rfc3339(meta.creation_date)
            } else {
                now.clone()
            },
            uploaded_at: now,
        };
        inv::insert_image(pool, &row).await.map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                BackendError::Conflict(IMAGE_EXISTS.into())
            }
            e => db(e),
        })?;
        for alias in &up.aliases {
            inv::insert_alias(
                pool,
                &inv::AliasRow {
                    project: project_owned.clone(),
                    name: alias.clone(),
                    target: fp.clone(),
                    description: String::new(),
                },
            )
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    BackendError::Conflict(format!("Alias {alias} already exists"))
                }
                e => db(e),
            })?;
        }
        Ok(image_type)
    }
    .await;
    let image_type = match result {
        Ok(t) => t,
        Err(e) => {
            // Nothing half-made stays: the row (and its aliases) and,
            // when no project holds the image, its files. A row that was
            // there first (the same image registered at the same time) is
            // not this one's to remove.
            if matches!(&e, BackendError::Conflict(m) if m == IMAGE_EXISTS) {
                return Err(OpError::from(e));
            }
            let _ = inv::delete_image(pool, &project_owned, &fp).await;
            if fresh && inv::image_references(pool, &fp).await.unwrap_or(1) == 0 {
                let _ = store.remove(&fp).await;
            }
            return Err(OpError::from(e));
        }
    };
    lifecycle(
        bus,
        &project_owned,
        "image-created",
        &resource_url(&project_owned, &format!("images/{fp}")),
        serde_json::json!({"type": image_type}),
    );
    Ok(serde_json::json!({"fingerprint": fp, "size": up.metadata_size + up.rootfs_size}))
}

/// An image on a simplestreams server, as a copy or a create names it.
pub(super) struct Wanted<'a> {
    pub server: &'a str,
    pub alias: Option<&'a str>,
    pub fingerprint: Option<&'a str>,
    /// The virtual-machine variant of the alias.
    pub vm: bool,
}

/// What pulling an image from a simplestreams server into a project
/// needs, detached from the backend so that an operation can own it.
pub(super) struct Puller {
    pool: AnyPool,
    store: Arc<ImageStore>,
    bus: EventBus,
    fetch: Fetcher,
    tmp: PathBuf,
    budget: image_budget::Budget,
    /// The project whose image store it goes into.
    project: String,
}

impl EmbeddedBackend {
    pub(super) fn puller(&self, project: &str) -> Puller {
        Puller {
            pool: self.pool.clone(),
            store: self.images.clone(),
            bus: self.bus.clone(),
            fetch: self.fetch.clone(),
            tmp: self.data_dir.join("tmp"),
            budget: image_budget::Budget::new(self.max_image_bytes),
            project: project.to_owned(),
        }
    }
}

impl Puller {
    /// Downloads `wanted` (progress in `ctx`'s metadata), holds it to the
    /// rules of an upload, and registers it in the project with `aliases`
    /// (an image the project has already only gains the aliases). Its
    /// fingerprint, and its size when it is new.
    pub(super) async fn pull(
        &self,
        ctx: &operations::OpCtx,
        wanted: &Wanted<'_>,
        aliases: &[types::NewImageAlias],
        public: bool,
    ) -> Result<(String, Option<u64>), operations::OpError> {
        let (pool, store, budget) = (&self.pool, &self.store, self.budget);
        let (project_owned, tmp) = (&self.project, &self.tmp);
        let (http, base) = simplestreams::connect(&self.fetch, wanted.server).await?;
        let found = simplestreams::find(
            &http,
            &base,
            simplestreams::Wanted {
                alias: wanted.alias,
                fingerprint: wanted.fingerprint,
                vm: wanted.vm,
            },
        )
        .await?;
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(|e| operations::OpError::Failed(format!("spool: {e}")))?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let meta = simplestreams::Spooled(tmp.join(format!("ss-{id}.meta")));
        let rootfs = simplestreams::Spooled(tmp.join(format!("ss-{id}.rootfs")));
        let mut combined = sha2::Sha256::new();
        let meta_size = simplestreams::download(
            &http,
            &found.metadata,
            &meta.0,
            "metadata",
            &mut combined,
            budget,
            ctx,
        )
        .await?;
        let rootfs_size = simplestreams::download(
            &http,
            &found.rootfs,
            &rootfs.0,
            "rootfs",
            &mut combined,
            budget.after(meta_size),
            ctx,
        )
        .await?;
        let fp = hex::encode(combined.finalize());
        if let Some(c) = &found.combined
            && !c.eq_ignore_ascii_case(&fp)
        {
            return Err(operations::OpError::Failed(format!(
                "the image's fingerprint {fp} does not match the server's {c}"
            )));
        }
        ctx.check()?;
        // A server's image is held to the rules of an upload (its
        // unpacked size, a VM disk's backing files and virtual
        // size); the spooled files go when this returns.
        // Measuring may take minutes for a big image: a cancel stops
        // it (dropping the check kills tar).
        tokio::select! {
            checked = image_size::check(&meta.0, &rootfs.0, found.vm, budget) => checked?,
            () = ctx.cancelled() => return Err(operations::OpError::Cancelled),
        }
        let up = types::ImageUpload {
            metadata: meta.0.clone(),
            metadata_size: meta_size,
            metadata_name: "metadata.tar.xz".into(),
            rootfs: rootfs.0.clone(),
            rootfs_size,
            rootfs_name: if found.vm {
                "disk-kvm.img"
            } else {
                "root.tar.xz"
            }
            .into(),
            virtual_machine: found.vm,
            fingerprint: fp.clone(),
            aliases: aliases.iter().map(|a| a.name.clone()).collect(),
            public,
        };
        // Already here: only the aliases are new.
        if find(pool, project_owned, &fp).await.is_ok() {
            for a in aliases {
                let _ = inv::insert_alias(
                    pool,
                    &inv::AliasRow {
                        project: project_owned.to_string(),
                        name: a.name.clone(),
                        target: fp.clone(),
                        description: a.description.clone().unwrap_or_default(),
                    },
                )
                .await;
            }
            return Ok((fp, None));
        }
        let fresh = store.take_upload(&up).await?;
        if let Err(e) = register(pool, store, &self.bus, project_owned, &up, fresh).await {
            // Another pull of the same image (two creates from one alias)
            // registered it first: it is here, which is all that was asked.
            if find(pool, project_owned, &fp).await.is_ok() {
                return Ok((fp, None));
            }
            return Err(e);
        }
        Ok((fp, Some(meta_size + rootfs_size)))
    }
}

#[async_trait::async_trait]
impl Images for EmbeddedBackend {
    async fn list_images(
        &self,
        scope: ListScope<'_>,
    ) -> Result<Listing<types::Image>, BackendError> {
        self.check_scope(&scope).await?;
        let rows = inv::list_images(&self.pool, scope.project.map(|p| p.as_str()))
            .await
            .map_err(db)?;
        if !scope.expand {
            return Ok(Listing::Names(
                rows.into_iter().map(|r| r.fingerprint).collect(),
            ));
        }
        let mut aliases: HashMap<String, Vec<inv::AliasRow>> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            if !aliases.contains_key(&r.project) {
                let a = inv::list_aliases(&self.pool, &r.project)
                    .await
                    .map_err(db)?;
                aliases.insert(r.project.clone(), a);
            }
            out.push(to_image(r, &aliases[&r.project]));
        }
        Ok(Listing::Full(out))
    }

    async fn get_image(
        &self,
        project: &ProjectName,
        fingerprint: &ImageFingerprint,
    ) -> Result<(types::Image, Option<String>), BackendError> {
        let row = find(&self.pool, project, fingerprint).await?;
        let aliases = inv::list_aliases(&self.pool, project).await.map_err(db)?;
        Ok((to_image(&row, &aliases), None))
    }

    async fn delete_image(
        &self,
        project: &ProjectName,
        fingerprint: &ImageFingerprint,
    ) -> Result<Operation, BackendError> {
        let row = find(&self.pool, project, fingerprint).await?;
        let (pool, store, bus) = (self.pool.clone(), self.images.clone(), self.bus.clone());
        let project_owned = project.to_owned();
        let fp = row.fingerprint.clone();
        Ok(self.ops.start(
            project,
            "Deleting image",
            resources("images", project, &format!("images/{fp}")),
            false,
            move |_ctx| async move {
                inv::delete_image(&pool, &project_owned, &fp)
                    .await
                    .map_err(db)?;
                if inv::image_references(&pool, &fp).await.map_err(db)? == 0
                    && inv::instances_using_image(&pool, &fp).await.map_err(db)? == 0
                {
                    store.remove(&fp).await?;
                }
                lifecycle(
                    &bus,
                    &project_owned,
                    "image-deleted",
                    &resource_url(&project_owned, &format!("images/{fp}")),
                    json!({}),
                );
                Ok(serde_json::Value::Null)
            },
        ))
    }

    async fn copy_image(
        &self,
        project: &ProjectName,
        req: &types::ImageCopy,
    ) -> Result<Operation, BackendError> {
        self.ensure_project(project).await?;
        if req.source.protocol != "simplestreams" {
            return Err(BackendError::NotSupported(
                "the embedded backend copies images from simplestreams servers; copying from an Incus server needs BACKEND=incus".into(),
            ));
        }
        for a in &req.aliases {
            if inv::get_alias(&self.pool, project, &a.name)
                .await
                .map_err(db)?
                .is_some()
            {
                return Err(BackendError::Conflict(format!(
                    "Alias {} already exists",
                    a.name
                )));
            }
        }
        let want_vm = req.source.image_type.as_deref() == Some(driver_types::VM);
        let puller = self.puller(project.as_str());
        let req = req.clone();
        Ok(self.ops.start(
            project,
            "Downloading image",
            BTreeMap::new(),
            true,
            move |ctx| async move {
                let (fp, size) = puller
                    .pull(
                        &ctx,
                        &Wanted {
                            server: &req.source.server,
                            alias: req.source.alias.as_deref(),
                            fingerprint: req.source.fingerprint.as_deref(),
                            vm: want_vm,
                        },
                        &req.aliases,
                        req.public,
                    )
                    .await?;
                Ok(match size {
                    Some(size) => json!({"fingerprint": fp, "size": size}),
                    None => json!({"fingerprint": fp}),
                })
            },
        ))
    }

    async fn import_image(
        &self,
        project: &ProjectName,
        upload: &types::ImageUpload,
    ) -> Result<Operation, BackendError> {
        self.ensure_project(project).await?;
        // Refused before anything is stored (400, or 413 when too large
        // once unpacked; the spool goes with the request).
        image_size::check(
            &upload.metadata,
            &upload.rootfs,
            upload.virtual_machine,
            image_budget::Budget::new(self.max_image_bytes),
        )
        .await?;
        // The spool goes away when this returns: take the files now.
        let fresh = self.images.take_upload(upload).await?;
        let (pool, store, bus) = (self.pool.clone(), self.images.clone(), self.bus.clone());
        let project_owned = project.to_owned();
        let up = upload.clone();
        Ok(
            self.ops.start(
                project,
                "Importing image",
                resources("images", project, &format!("images/{}", up.fingerprint)),
                false,
                move |_ctx| async move {
                    register(&pool, &store, &bus, &project_owned, &up, fresh).await
                },
            ),
        )
    }

    async fn publish_image(
        &self,
        project: &ProjectName,
        from: &PublishFrom,
        req: &ImagePublish,
    ) -> Result<Operation, BackendError> {
        self.ensure_project(project).await?;
        // Held while packing: the instance is neither started nor changed,
        // renamed or deleted meanwhile. Read under it: the one named may
        // have been deleted and made anew (another id map) meanwhile.
        let guard = self.lock(&from.project, &from.instance).lock_owned().await;
        let row = self.row(&from.project, &from.instance).await?;
        let vm = row.instance_type == driver_types::VM;
        let host = Lxc::host_name(&row.project, &row.name);
        let stopped = self.driver(&row).info(&host).await.state == "STOPPED";
        let rootfs = match &from.snapshot {
            Some(snap) => self.snapshot_source(&row, snap).await?.1,
            None => self.instance_dir(&row).join("rootfs"),
        };
        if !stopped && (vm || from.snapshot.is_none()) {
            return Err(BackendError::Conflict(if vm {
                "The virtual machine is running; stop it first (its disk is QEMU's while it runs)"
            } else {
                "The instance is running; stop it (or publish a snapshot of it) first"
            }
            .into()));
        }
        // A VM's disk and the image it is an overlay on, or its kernel.
        let vm_source = if vm {
            let boot = self.qemu.boot(&host).await?;
            if from.snapshot.is_some() && boot != Boot::Disk {
                return Err(BackendError::BadRequest(
                    "this VM boots from a kernel and initrd and has no disk snapshots".into(),
                ));
            }
            let base = (!row.image.is_empty()).then(|| self.images.rootfs(&row.image));
            Some((boot, base))
        } else {
            None
        };
        let map = if vm {
            None
        } else {
            Self::confinement(&row)?.map()
        };
        // The image it was made from describes it, unless told otherwise.
        let config: types::ConfigMap = serde_json::from_str(&row.config).unwrap_or_default();
        let mut properties: BTreeMap<String, String> = config
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("image.")?.to_owned(), v.clone())))
            .collect();
        properties.extend(req.properties.clone());
        let (pool, store, bus) = (self.pool.clone(), self.images.clone(), self.bus.clone());
        let budget = image_budget::Budget::new(self.max_image_bytes);
        let project_owned = project.to_owned();
        let aliases: Vec<String> = req.aliases.iter().map(|a| a.name.clone()).collect();
        let public = req.public;
        let (qemu, vm_dir) = (self.qemu.clone(), self.qemu.vm_dir(&host));
        let snapshot = from.snapshot.as_ref().map(|s| s.to_string());
        Ok(self.ops.start(
            project,
            "Publishing image",
            resources(
                "instances",
                &from.project,
                &format!("instances/{}", from.instance),
            ),
            false,
            move |_ctx| async move {
                let _guard = guard;
                let spool = store.publish_spool().await?;
                let result = async {
                    let packed = match &vm_source {
                        None => {
                            image_pack::pack_container(&spool, &rootfs, map.as_ref(), &properties)
                                .await?
                        }
                        Some((Boot::Disk, base)) => {
                            // The whole disk, standing alone: an image
                            // never depends on another.
                            let disk = spool.join("rootfs");
                            let snap = snapshot.as_deref();
                            qemu.export_disk(&host, snap, base.as_deref(), &disk, false)
                                .await?;
                            image_pack::pack_vm(&spool, Some(disk), &vm_dir, "", &properties)
                                .await?
                        }
                        Some((Boot::Kernel { cmdline }, _)) => {
                            image_pack::pack_vm(&spool, None, &vm_dir, cmdline, &properties).await?
                        }
                    };
                    image_size::check(&packed.metadata, &packed.rootfs, vm, budget).await?;
                    let up = ImageUpload {
                        metadata: packed.metadata,
                        metadata_size: packed.metadata_size,
                        metadata_name: "metadata.tar.gz".into(),
                        rootfs: packed.rootfs,
                        rootfs_size: packed.rootfs_size,
                        rootfs_name: if vm { "rootfs.img" } else { "rootfs.tar.gz" }.into(),
                        virtual_machine: vm,
                        fingerprint: packed.fingerprint,
                        aliases,
                        public,
                    };
                    let fresh = store.take_upload(&up).await?;
                    Ok::<_, BackendError>((up, fresh))
                }
                .await;
                let _ = tokio::fs::remove_dir_all(&spool).await;
                let (up, fresh) = result?;
                register(&pool, &store, &bus, &project_owned, &up, fresh).await
            },
        ))
    }

    async fn export_image(
        &self,
        project: &ProjectName,
        fingerprint: &ImageFingerprint,
    ) -> Result<Download, BackendError> {
        let row = find(&self.pool, project, fingerprint).await?;
        image_pack::export_split(
            &self.images.metadata(&row.fingerprint),
            &self.images.rootfs(&row.fingerprint),
            row.image_type == "virtual-machine",
        )
        .await
    }

    async fn list_image_aliases(
        &self,
        project: &ProjectName,
        expand: bool,
    ) -> Result<Listing<types::ImageAliasesEntry>, BackendError> {
        let rows = inv::list_aliases(&self.pool, project).await.map_err(db)?;
        if !expand {
            return Ok(Listing::Names(rows.into_iter().map(|r| r.name).collect()));
        }
        // Each alias names its image's type: one read of the project's images.
        let kinds: HashMap<String, String> = inv::list_images(&self.pool, Some(project))
            .await
            .map_err(db)?
            .into_iter()
            .map(|i| (i.fingerprint, i.image_type))
            .collect();
        let out = rows
            .iter()
            .map(|r| to_alias(r, kinds.get(&r.target).map_or("", String::as_str)))
            .collect();
        Ok(Listing::Full(out))
    }

    async fn get_image_alias(
        &self,
        project: &ProjectName,
        name: &ImageAliasName,
    ) -> Result<types::ImageAliasesEntry, BackendError> {
        let row = inv::get_alias(&self.pool, project, name)
            .await
            .map_err(db)?
            .ok_or_else(|| BackendError::NotFound(Missing::image_alias(name)))?;
        let kind = find(&self.pool, project, &row.target)
            .await
            .map(|i| i.image_type)
            .unwrap_or_default();
        Ok(to_alias(&row, &kind))
    }

    async fn create_image_alias(
        &self,
        project: &ProjectName,
        req: &types::ImageAliasCreate,
    ) -> Result<(), BackendError> {
        let image =
            find(&self.pool, project, &req.target)
                .await
                .missing(|| Missing::AliasTarget {
                    project: project.to_string(),
                    target: req.target.clone(),
                })?;
        inv::insert_alias(
            &self.pool,
            &inv::AliasRow {
                project: project.as_str().to_owned(),
                name: req.name.clone(),
                target: image.fingerprint,
                description: req.description.clone().unwrap_or_default(),
            },
        )
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                BackendError::Conflict("Alias already exists".into())
            }
            e => db(e),
        })
    }

    async fn delete_image_alias(
        &self,
        project: &ProjectName,
        name: &ImageAliasName,
    ) -> Result<(), BackendError> {
        if inv::delete_alias(&self.pool, project, name)
            .await
            .map_err(db)?
        {
            Ok(())
        } else {
            Err(BackendError::NotFound(Missing::image_alias(name)))
        }
    }
}
