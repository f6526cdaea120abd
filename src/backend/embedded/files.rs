//! File pull and push for containers, straight on the rootfs directory but
//! resolved the way the container would resolve the path: `openat2` with
//! `RESOLVE_IN_ROOT` keeps `..` and absolute symlinks inside the rootfs, so
//! no path or link a container holds can reach the host's files.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::idmap::IdMap;
use super::{EmbeddedBackend, driver_types, lxc};
use crate::backend::types::{ByteStream, Download, FileMeta, FilePull, FilePush};
use crate::backend::{BackendError, Files, Missing, ReportMissing};
use crate::names::{InstanceName, LogFileName, ProjectName};

/// The log files an instance may have (LXC's, QEMU's); the console's is
/// `console_log`.
const LOG_FILES: [&str; 2] = ["lxc.log", "qemu.log"];

fn no_vm_files() -> BackendError {
    BackendError::NotSupported(
        "file transfer to a virtual machine needs a guest agent; use the console".into(),
    )
}

fn open_how(flags: i32, mode: u32) -> libc::open_how {
    // SAFETY: open_how is plain data; zero is a valid value for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.mode = u64::from(mode);
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    how
}

/// `openat2(dir, path, how)`; `path` is relative to `dir`, which acts as `/`.
fn openat2(dir: RawFd, path: &str, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
    let c =
        CString::new(path).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let how = open_how(flags | libc::O_CLOEXEC, mode);
    // SAFETY: c and how outlive the call; the kernel copies `size` bytes of how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn open_root(rootfs: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(rootfs)?;
    Ok(f.into())
}

/// Clears O_NONBLOCK on a descriptor opened with it: it only kept the
/// open from waiting on a FIFO (refused by then); reads and writes of the
/// regular file that remains are done the ordinary way.
fn clear_nonblock(fd: &impl AsRawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, flags only.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What the path is keeps it from being transferred: a conflict with the
/// file's state, as on the Incus backend (where a FIFO keeps the pull from
/// opening).
fn not_a_file(path: &str) -> BackendError {
    BackendError::Conflict(format!(
        "{path} is neither a regular file nor a directory (a FIFO, socket or device is not transferred)"
    ))
}

fn map_err(path: &str) -> impl Fn(std::io::Error) -> BackendError + '_ {
    move |e| match e.raw_os_error() {
        Some(libc::ENOENT) => {
            BackendError::NotFound(Missing::Other(format!("{path}: no such file or directory")))
        }
        Some(libc::ENOTDIR) => {
            BackendError::BadRequest(format!("{path}: a parent is not a directory"))
        }
        Some(libc::EISDIR) => BackendError::BadRequest(format!("{path} is a directory")),
        Some(libc::ELOOP) => BackendError::BadRequest(format!("{path} is a symbolic link")),
        Some(libc::EXDEV) => BackendError::BadRequest(format!("{path} leaves the instance")),
        _ => BackendError::Internal(anyhow::anyhow!("{path}: {e}")),
    }
}

/// Owners as the container sees them (`map`: its id map, None when it
/// runs with the host's ids).
fn meta_of(m: &std::fs::Metadata, map: Option<IdMap>) -> FileMeta {
    use std::os::unix::fs::MetadataExt;
    let (uid, gid) = match map {
        Some(map) => (map.ns_uid(m.uid()), map.ns_gid(m.gid())),
        None => (m.uid(), m.gid()),
    };
    FileMeta {
        kind: if m.is_dir() { "directory" } else { "file" }.into(),
        uid: Some(uid),
        gid: Some(gid),
        mode: Some(m.mode() & 0o7777),
    }
}

pub async fn pull(rootfs: &Path, path: &str, map: Option<IdMap>) -> Result<FilePull, BackendError> {
    let rootfs = rootfs.to_owned();
    let p = path.to_owned();
    let (file, meta, entries) = tokio::task::spawn_blocking(move || {
        let root = open_root(&rootfs).map_err(|_| {
            BackendError::NotFound(Missing::Other("Instance files not found".into()))
        })?;
        // Non-blocking: opening a FIFO the container made would otherwise
        // wait for a writer that may never come, holding a blocking thread.
        let fd = openat2(root.as_raw_fd(), &p, libc::O_RDONLY | libc::O_NONBLOCK, 0)
            .map_err(map_err(&p))?;
        let file = std::fs::File::from(fd);
        let m = file.metadata().map_err(map_err(&p))?;
        if !m.is_dir() && !m.is_file() {
            return Err(not_a_file(&p));
        }
        clear_nonblock(&file).map_err(map_err(&p))?;
        if m.is_dir() {
            // Our descriptor is already resolved safely; list through it.
            let entries: Vec<String> =
                std::fs::read_dir(format!("/proc/self/fd/{}", file.as_raw_fd()))
                    .map_err(map_err(&p))?
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
            Ok::<_, BackendError>((None, meta_of(&m, map), Some(entries)))
        } else {
            Ok((Some((file, m.len())), meta_of(&m, map), None))
        }
    })
    .await
    .map_err(|e| BackendError::Internal(anyhow::anyhow!("file task: {e}")))??;
    if let Some(mut entries) = entries {
        entries.sort();
        return Ok(FilePull::Directory { meta, entries });
    }
    let (file, len) = file.expect("a file");
    let file = tokio::fs::File::from_std(file);
    let stream = super::downloads::file_stream(file);
    Ok(FilePull::File {
        meta,
        content: Download {
            content_type: Some("application/octet-stream".into()),
            content_length: Some(len),
            stream: Box::pin(stream),
        },
    })
}

pub async fn push(
    rootfs: &Path,
    path: &str,
    opts: FilePush,
    map: Option<IdMap>,
    mut body: ByteStream,
) -> Result<(), BackendError> {
    // In a container with an id map the request's ids are the container's
    // (root, 0, when not given, as Incus does): the file belongs to their
    // host counterparts, so root inside owns what root pushed. Checked
    // before anything is created.
    let (uid, gid) = match map {
        Some(map) => {
            let (uid, gid) = (opts.uid.unwrap_or(0), opts.gid.unwrap_or(0));
            let outside = |what: &str, id: u32| {
                BackendError::BadRequest(format!(
                    "{what} {id} is outside the container's ids (0-{})",
                    map.size - 1
                ))
            };
            (
                Some(map.host_uid(uid).ok_or_else(|| outside("uid", uid))?),
                Some(map.host_gid(gid).ok_or_else(|| outside("gid", gid))?),
            )
        }
        None => (opts.uid, opts.gid),
    };
    let (parent, base) = path
        .rsplit_once('/')
        .filter(|(_, b)| !b.is_empty() && *b != "." && *b != "..")
        .ok_or_else(|| BackendError::BadRequest(format!("{path} does not name a file")))?;
    let parent = if parent.is_empty() { "/" } else { parent }.to_owned();
    let base = base.to_owned();
    let rootfs = rootfs.to_owned();
    let p = path.to_owned();
    let file = tokio::task::spawn_blocking(move || {
        let root = open_root(&rootfs).map_err(|_| {
            BackendError::NotFound(Missing::Other("Instance files not found".into()))
        })?;
        let dir = openat2(
            root.as_raw_fd(),
            &parent,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .map_err(map_err(&p))?;
        // The last component is opened relative to its (safely resolved)
        // directory and never followed if it is a link.
        let c = CString::new(base).map_err(|_| BackendError::BadRequest("bad file name".into()))?;
        let mode = opts.mode.unwrap_or(0o644) & 0o7777;
        // Non-blocking and not truncating yet: an existing FIFO would hold
        // the open until a reader came, and whatever is there is checked
        // to be a regular file before a byte of it changes.
        // SAFETY: c outlives the call; openat returns a new descriptor or -1.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY
                    | libc::O_CREAT
                    | libc::O_NOFOLLOW
                    | libc::O_NONBLOCK
                    | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            // A FIFO nobody reads: refused by the kernel before we could.
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Err(not_a_file(&p));
            }
            return Err(map_err(&p)(e));
        }
        // SAFETY: a fresh descriptor from openat.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if !file.metadata().map_err(map_err(&p))?.is_file() {
            return Err(not_a_file(&p));
        }
        clear_nonblock(&file).map_err(map_err(&p))?;
        file.set_len(0).map_err(map_err(&p))?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&file, uid, gid).map_err(map_err(&p))?;
        }
        if opts.mode.is_some() {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(map_err(&p))?;
        }
        Ok::<_, BackendError>(file)
    })
    .await
    .map_err(|e| BackendError::Internal(anyhow::anyhow!("file task: {e}")))??;
    let mut file = tokio::fs::File::from_std(file);
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| BackendError::BadRequest(format!("reading the upload: {e}")))?;
        file.write_all(&chunk).await.map_err(map_err(path))?;
    }
    file.flush().await.map_err(map_err(path))
}

#[async_trait::async_trait]
impl Files for EmbeddedBackend {
    async fn pull_file(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        path: &str,
    ) -> Result<FilePull, BackendError> {
        let row = self.row(project, name).await?;
        if row.instance_type == driver_types::VM {
            return Err(no_vm_files());
        }
        let map = Self::confinement(&row)?.map();
        pull(
            &self.lxc.rootfs(&lxc::Lxc::host_name(project, name)),
            path,
            map,
        )
        .await
        .missing(|| Missing::File {
            instance: name.to_string(),
            path: path.to_owned(),
        })
    }

    async fn push_file(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        path: &str,
        opts: FilePush,
        body: ByteStream,
    ) -> Result<(), BackendError> {
        let row = self.row(project, name).await?;
        if row.instance_type == driver_types::VM {
            return Err(no_vm_files());
        }
        let map = Self::confinement(&row)?.map();
        push(
            &self.lxc.rootfs(&lxc::Lxc::host_name(project, name)),
            path,
            opts,
            map,
            body,
        )
        .await
        .missing(|| Missing::FileDirectory {
            instance: name.to_string(),
            path: path.to_owned(),
        })
    }

    async fn list_instance_logs(
        &self,
        project: &ProjectName,
        name: &InstanceName,
    ) -> Result<Vec<String>, BackendError> {
        let row = self.row(project, name).await?;
        let dir = self.instance_dir(&row);
        let mut logs = Vec::new();
        for f in LOG_FILES {
            if tokio::fs::try_exists(dir.join(f)).await.unwrap_or(false) {
                logs.push(f.to_owned());
            }
        }
        Ok(logs)
    }

    async fn get_instance_log(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        file: &LogFileName,
    ) -> Result<Download, BackendError> {
        let log = || Missing::Log {
            instance: name.to_string(),
            file: file.to_string(),
        };
        let row = self.row(project, name).await?;
        // Only the files lxgate itself names; nothing from the path reaches the disk.
        let Some(f) = LOG_FILES.iter().find(|f| **f == file.as_str()) else {
            return Err(BackendError::NotFound(log()));
        };
        let path = self.instance_dir(&row).join(f);
        super::downloads::download_file(&path, "text/plain; charset=utf-8", log).await
    }

    async fn console_log(
        &self,
        project: &ProjectName,
        name: &InstanceName,
    ) -> Result<Download, BackendError> {
        let row = self.row(project, name).await?;
        let path = self.instance_dir(&row).join("console.log");
        super::downloads::download_file(&path, "text/plain; charset=utf-8", || {
            Missing::instance(name)
        })
        .await
    }
}
