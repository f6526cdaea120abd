//! Images out of instances and back out of the store: publishing packs a
//! container's root filesystem (or a snapshot's) into the split format that
//! `POST images/import` takes, and exporting streams a stored image as that
//! same `multipart/form-data`, so an export can be imported again.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::downloads::file_stream;
use super::idmap::IdMap;
use super::process;
use crate::backend::BackendError;
use crate::backend::types::Download;

/// How long packing a root filesystem may take.
const PACK_TIMEOUT: Duration = Duration::from_secs(3600);

/// A packed image in the publish spool.
#[derive(Debug)]
pub struct Packed {
    pub metadata: PathBuf,
    pub metadata_size: u64,
    pub rootfs: PathBuf,
    pub rootfs_size: u64,
    /// SHA-256 of the metadata tarball followed by the rootfs tarball.
    pub fingerprint: String,
}

#[derive(Serialize)]
struct MetadataYaml<'a> {
    architecture: &'static str,
    creation_date: i64,
    properties: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot: Option<BootYaml<'a>>,
}

/// A kernel-booting VM image's `boot`: the files in its rootfs tarball and
/// the command line (`images::BootMeta` reads it back).
#[derive(Serialize)]
struct BootYaml<'a> {
    kernel: &'static str,
    initrd: &'static str,
    cmdline: &'a str,
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> BackendError {
    move |e| BackendError::Internal(anyhow::anyhow!("{what}: {e}"))
}

/// Packs `rootfs` (a container's or a snapshot's root directory) into
/// `spool` (a fresh directory only root may enter). `map`: the container's
/// id map, whose ids go back to 0-based in the image (an image is never
/// tied to one container's ids). GNU tar walks the tree by descriptor
/// without following links (`--create` as for backups), so a link the
/// container planted is packed as a link, never followed out of it.
pub async fn pack_container(
    spool: &Path,
    rootfs: &Path,
    map: Option<&IdMap>,
    properties: &BTreeMap<String, String>,
) -> Result<Packed, BackendError> {
    let rootfs_out = spool.join("rootfs");
    pack_rootfs(spool, rootfs, map, &rootfs_out, true).await?;
    with_metadata(spool, rootfs_out, properties, None).await
}

/// A VM image from a VM's files in `spool`: its disk (`disk`, a standalone
/// qcow2 written there already) or, for a VM that boots a kernel,
/// `kernel` and `initrd` of its directory `vm_dir` packed as the tarball
/// `metadata.yaml`'s `boot` names (with `cmdline`).
pub async fn pack_vm(
    spool: &Path,
    disk: Option<PathBuf>,
    vm_dir: &Path,
    cmdline: &str,
    properties: &BTreeMap<String, String>,
) -> Result<Packed, BackendError> {
    if let Some(disk) = disk {
        return with_metadata(spool, disk, properties, None).await;
    }
    let rootfs_out = spool.join("rootfs");
    process::run(
        "tar",
        [
            OsString::from("--create"),
            "--gzip".into(),
            "--file".into(),
            rootfs_out.clone().into(),
            "--directory".into(),
            vm_dir.into(),
            "--numeric-owner".into(),
            "--owner=0".into(),
            "--group=0".into(),
            "--".into(),
            "kernel".into(),
            "initrd".into(),
        ],
        PACK_TIMEOUT,
    )
    .await?;
    let boot = BootYaml {
        kernel: "kernel",
        initrd: "initrd",
        cmdline,
    };
    with_metadata(spool, rootfs_out, properties, Some(boot)).await
}

/// Writes `metadata.yaml` (with `boot` for a kernel VM) in its own tarball
/// beside `rootfs_out` in `spool`, and fingerprints the two.
async fn with_metadata(
    spool: &Path,
    rootfs_out: PathBuf,
    properties: &BTreeMap<String, String>,
    boot: Option<BootYaml<'_>>,
) -> Result<Packed, BackendError> {
    // metadata.yaml, in its own tarball.
    let meta_dir = spool.join("meta");
    tokio::fs::create_dir_all(&meta_dir)
        .await
        .map_err(io("making the metadata folder"))?;
    let yaml = serde_yaml_ng::to_string(&MetadataYaml {
        architecture: "x86_64",
        creation_date: time::OffsetDateTime::now_utc().unix_timestamp(),
        properties,
        boot,
    })
    .map_err(|e| BackendError::Internal(anyhow::anyhow!("metadata.yaml: {e}")))?;
    tokio::fs::write(meta_dir.join("metadata.yaml"), yaml)
        .await
        .map_err(io("writing metadata.yaml"))?;
    let metadata = spool.join("metadata");
    process::run(
        "tar",
        [
            OsString::from("--create"),
            "--gzip".into(),
            "--file".into(),
            metadata.clone().into(),
            "--directory".into(),
            meta_dir.clone().into(),
            "--numeric-owner".into(),
            "--owner=0".into(),
            "--group=0".into(),
            "metadata.yaml".into(),
        ],
        Duration::from_secs(60),
    )
    .await?;

    let (metadata_size, rootfs_size, fingerprint) = {
        let (m, r) = (metadata.clone(), rootfs_out.clone());
        tokio::task::spawn_blocking(move || fingerprint_of(&m, &r))
            .await
            .map_err(|e| BackendError::Internal(anyhow::anyhow!("hashing task: {e}")))?
            .map_err(io("hashing the packed image"))?
    };
    Ok(Packed {
        metadata,
        metadata_size,
        rootfs: rootfs_out,
        rootfs_size,
        fingerprint,
    })
}

/// Packs the tree `rootfs` into the tarball `out` (gzipped if `gzip`),
/// its ids shifted back to 0-based from `map` (the id map files are written
/// into `spool`, a directory only root may enter). Walked by descriptor
/// without following links, the container's own file system only (see
/// `pack_container`). Run as a direct child without a compressor when not
/// gzipped, so dropping the future (a cancelled copy) kills all of it.
pub async fn pack_rootfs(
    spool: &Path,
    rootfs: &Path,
    map: Option<&IdMap>,
    out: &Path,
    gzip: bool,
) -> Result<(), BackendError> {
    let mut args: Vec<OsString> = vec!["--create".into()];
    if gzip {
        args.push("--gzip".into());
    }
    args.extend([
        "--file".into(),
        out.into(),
        "--directory".into(),
        rootfs.into(),
        "--numeric-owner".into(),
        "--xattrs".into(),
        // The container's own tree only (nothing mounted into it).
        "--one-file-system".into(),
    ]);
    if let Some(map) = map {
        // `+<host id> :<container id>` for each id of the map.
        let (users, groups) = (spool.join("owner-map"), spool.join("group-map"));
        let (u, g, (ub, gb, size)) = (
            users.clone(),
            groups.clone(),
            (map.uid_base, map.gid_base, map.size),
        );
        // Written line by line on a blocking thread: an admin-set map may
        // be large.
        tokio::task::spawn_blocking(move || {
            write_id_map(&u, ub, size)?;
            write_id_map(&g, gb, size)
        })
        .await
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("id map task: {e}")))?
        .map_err(io("writing the id maps"))?;
        let mut owner = OsString::from("--owner-map=");
        owner.push(&users);
        let mut group = OsString::from("--group-map=");
        group.push(&groups);
        args.extend([owner, group]);
    }
    args.push(".".into());
    process::run("tar", args, PACK_TIMEOUT).await.map(drop)
}

/// GNU tar's `--owner-map`/`--group-map` lines for `size` ids from `base`.
fn id_map_lines(base: u32, size: u32) -> impl Iterator<Item = String> {
    (0..size).map(move |i| format!("+{} :{i}\n", u64::from(base) + u64::from(i)))
}

fn write_id_map(path: &Path, base: u32, size: u32) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for line in id_map_lines(base, size) {
        out.write_all(line.as_bytes())?;
    }
    out.flush()
}

/// Sizes of both files and the SHA-256 of their concatenation.
fn fingerprint_of(metadata: &Path, rootfs: &Path) -> std::io::Result<(u64, u64, String)> {
    let mut hash = Sha256::new();
    let mut sizes = [0u64; 2];
    for (i, path) in [metadata, rootfs].into_iter().enumerate() {
        let mut f = std::fs::File::open(path)?;
        sizes[i] = std::io::copy(&mut f, &mut hash)?;
    }
    Ok((sizes[0], sizes[1], hex::encode(hash.finalize())))
}

/// A stored split image as `multipart/form-data`: a `metadata` part and a
/// `rootfs` part (`rootfs.img` for a VM disk), as Incus exports one and as
/// `POST images/import` takes it back. Streamed from the files; the length
/// is known up front.
pub async fn export_split(
    metadata: &Path,
    rootfs: &Path,
    virtual_machine: bool,
) -> Result<Download, BackendError> {
    let boundary = format!("lxgate-{}", uuid::Uuid::new_v4().simple());
    let rootfs_part = if virtual_machine {
        "rootfs.img"
    } else {
        "rootfs"
    };
    let head = |name: &str, first: bool| {
        Bytes::from(format!(
            "{}--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            if first { "" } else { "\r\n" }
        ))
    };
    let (meta_head, rootfs_head) = (head("metadata", true), head(rootfs_part, false));
    let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
    let open = |p: &Path| {
        let p = p.to_owned();
        async move { tokio::fs::File::open(&p).await }
    };
    let (meta_file, rootfs_file) = (
        open(metadata).await.map_err(io("opening the image"))?,
        open(rootfs).await.map_err(io("opening the image"))?,
    );
    let read = io("reading the image");
    let total = meta_head.len() as u64
        + meta_file.metadata().await.map_err(&read)?.len()
        + rootfs_head.len() as u64
        + rootfs_file.metadata().await.map_err(&read)?.len()
        + tail.len() as u64;
    let once = |b: Bytes| futures::stream::once(async move { Ok::<_, std::io::Error>(b) });
    let stream = once(meta_head)
        .chain(file_stream(meta_file))
        .chain(once(rootfs_head))
        .chain(file_stream(rootfs_file))
        .chain(once(tail));
    Ok(Download {
        content_type: Some(format!("multipart/form-data; boundary={boundary}")),
        content_length: Some(total),
        stream: Box::pin(stream),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_shift_every_id_of_the_range_back_to_zero() {
        let lines: String = id_map_lines(1_000_000, 3).collect();
        assert_eq!(lines, "+1000000 :0\n+1000001 :1\n+1000002 :2\n");
        assert_eq!(id_map_lines(4_294_000_000, 65536).count(), 65536);
    }
}
