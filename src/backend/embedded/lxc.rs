//! The LXC driver: system containers through the `lxc-*` tools, with an
//! lxcpath of lxgate's own (`DATA_DIR/lxc`) and a configuration lxgate
//! writes itself. Container names on the host are `<project>_<name>`: both
//! parts are validated resource names, which never contain `_`, so the
//! mapping is unambiguous and can never leave the lxcpath.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::Duration;

use tokio::process::Command;

use super::driver_types::{Attachments, LxcInfo};
use super::idmap::IdMap;
use super::limits::{parse_cpus, parse_size};
use super::lxc_monitor;
use super::process::{self, run};
use super::tarball;
use crate::backend::BackendError;
use crate::backend::types::{ConfigMap, ExecRequest, TerminalSession};

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// LXC's own defaults (Debian's paths): `common.conf` drops dangerous
/// capabilities, limits devices and loads the default seccomp profile;
/// `userns.conf` adjusts them for a user namespace.
const COMMON_CONF: &str = "/usr/share/lxc/config/common.conf";
const USERNS_CONF: &str = "/usr/share/lxc/config/userns.conf";

/// What an unpack inside a user namespace leaves out: device nodes, which
/// root there may not make (debootstrap's rootfs have `dev/null` and
/// friends), and with them the rest of `dev/`, as Incus does. The `dev`
/// directory itself stays; LXC mounts a tmpfs there with the devices a
/// container gets. Anchored, so only the rootfs's own `dev`, however the
/// tarball spells its names.
const UNPRIVILEGED_EXCLUDES: [&str; 4] = [
    "--anchored",
    "--exclude=./dev/*",
    "--exclude=dev/*",
    "--exclude=/dev/*",
];

/// How a container is confined (see idmap.rs for the choice of map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confinement {
    /// Host ids inside: containers made before lxgate mapped ids (they keep
    /// the configuration they were made with, so they keep running as they
    /// did), and those an admin creates with `security.privileged=true`.
    Privileged,
    /// A user namespace over `IdMap`, LXC's common and userns defaults,
    /// seccomp, AppArmor where the kernel has it.
    Unprivileged(IdMap),
}

impl Confinement {
    pub fn map(&self) -> Option<IdMap> {
        match self {
            Confinement::Privileged => None,
            Confinement::Unprivileged(m) => Some(*m),
        }
    }
}

/// How long a listing may reuse an `lxc-info` answer as it is. Every state
/// change lxgate makes drops the entry, so only changes from outside (a
/// container that dies) show up this late.
const INFO_TTL: Duration = Duration::from_secs(2);

/// Past `INFO_TTL` and up to this age, a listing still answers with the
/// last answer at once while a refresh runs behind it, so that no listing
/// waits for a hundred `lxc-info`s; older than this, it waits for a fresh one.
const INFO_STALE_MAX: Duration = Duration::from_secs(30);

/// Refreshes running behind listings at once (each is an `lxc-info` process).
const REFRESHES: usize = 4;

/// See [`Lxc::changing`].
pub struct Changing<'a> {
    lxc: &'a Lxc,
    ct: String,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        {
            let mut changing = self
                .lxc
                .changing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = changing.get_mut(&self.ct) {
                *n -= 1;
                if *n == 0 {
                    changing.remove(&self.ct);
                }
            }
        }
        self.lxc.forget(&self.ct);
    }
}

pub struct Lxc {
    lxcpath: PathBuf,
    recent: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, LxcInfo)>>,
    /// Moved by every `forget` of a container: an answer read while its count moved may predate
    /// the change, and is not kept.
    changes: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Containers whose refresh runs behind a listing.
    refreshing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Containers lxgate is changing (start, stop...), with how many
    /// changes run: what is read of them meanwhile is not kept.
    changing: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    refreshes: std::sync::Arc<tokio::sync::Semaphore>,
    /// Whether the kernel has AppArmor: asked once (it cannot change
    /// while the host runs), off the executor.
    apparmor: tokio::sync::OnceCell<bool>,
}

impl Lxc {
    pub fn new(lxcpath: PathBuf) -> Self {
        Self {
            lxcpath,
            recent: Default::default(),
            changes: Default::default(),
            refreshing: Default::default(),
            changing: Default::default(),
            refreshes: std::sync::Arc::new(tokio::sync::Semaphore::new(REFRESHES)),
            apparmor: Default::default(),
        }
    }

    /// Whether the kernel has AppArmor (LXC confines containers with it then).
    pub async fn apparmor(&self) -> bool {
        *self
            .apparmor
            .get_or_init(|| async {
                tokio::fs::try_exists("/sys/kernel/security/apparmor")
                    .await
                    .unwrap_or(false)
            })
            .await
    }

    /// `info`, or an answer younger than `INFO_TTL` (listings ask for every
    /// container at once; one process per container per request is too
    /// many), or one younger than `INFO_STALE_MAX` while a fresh one is read
    /// behind it.
    pub async fn info_cached(
        self: &std::sync::Arc<Self>,
        ct: &str,
    ) -> Result<LxcInfo, BackendError> {
        let kept = self.recent.lock().expect("info cache").get(ct).cloned();
        match kept {
            Some((at, info)) if at.elapsed() < INFO_TTL => Ok(info),
            Some((at, info)) if at.elapsed() < INFO_STALE_MAX => {
                self.refresh_behind(ct);
                Ok(info)
            }
            _ => self.info(ct).await,
        }
    }

    /// Reads `ct`'s state again on a task of its own (once at a time per
    /// container, `REFRESHES` at a time in all).
    fn refresh_behind(self: &std::sync::Arc<Self>, ct: &str) {
        if !self
            .refreshing
            .lock()
            .expect("refreshing")
            .insert(ct.to_owned())
        {
            return;
        }
        let this = std::sync::Arc::clone(self);
        let ct = ct.to_owned();
        tokio::spawn(async move {
            /// Ends the refresh however the task ends (a panic included).
            struct Done(std::sync::Arc<Lxc>, String);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0
                        .refreshing
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&self.1);
                }
            }
            let done = Done(this, ct);
            let _permit = done.0.refreshes.clone().acquire_owned().await;
            if let Err(e) = done.0.info(&done.1).await {
                // The next listing asks for itself (and says what failed).
                tracing::debug!(container = %done.1, error = %e, "refreshing a container's state failed");
                if let Ok(mut r) = done.0.recent.lock() {
                    r.remove(&done.1);
                }
            }
        });
    }

    /// The state read in the last 2 s, if any (never forks lxc-info).
    pub fn recent(&self, ct: &str) -> Option<LxcInfo> {
        self.recent
            .lock()
            .expect("info cache")
            .get(ct)
            .filter(|(at, _)| at.elapsed() < INFO_TTL)
            .map(|(_, info)| info.clone())
    }

    /// Marks `ct` as being changed until the guard is dropped: what
    /// `info_cached` knew is forgotten now and again at the end, and
    /// nothing read in between is kept (it may show the state before).
    pub fn changing(&self, ct: &str) -> Changing<'_> {
        *self
            .changing
            .lock()
            .expect("changing")
            .entry(ct.to_owned())
            .or_default() += 1;
        self.forget(ct);
        Changing {
            lxc: self,
            ct: ct.to_owned(),
        }
    }

    /// Forgets what `info_cached` knows of a container (after a change).
    pub fn forget(&self, ct: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        *self
            .changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(ct.to_owned())
            .or_default() += 1;
        recent.remove(ct);
    }

    fn changes_of(&self, ct: &str) -> u64 {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ct)
            .copied()
            .unwrap_or(0)
    }

    pub fn host_name(project: &str, name: &str) -> String {
        format!("{project}_{name}")
    }

    pub fn dir(&self, ct: &str) -> PathBuf {
        self.lxcpath.join(ct)
    }

    pub fn rootfs(&self, ct: &str) -> PathBuf {
        self.dir(ct).join("rootfs")
    }

    fn base_args<'a>(&'a self, ct: &'a str) -> Vec<&'a std::ffi::OsStr> {
        vec![
            "-P".as_ref(),
            self.lxcpath.as_os_str(),
            "-n".as_ref(),
            ct.as_ref(),
        ]
    }

    /// Creates the lxcpath (searchable by everyone, listable by root only:
    /// an unprivileged container's root must pass through it at start).
    async fn ensure_lxcpath(&self) -> Result<(), BackendError> {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::create_dir_all(&self.lxcpath)
            .await
            .map_err(io("creating the lxcpath"))?;
        tokio::fs::set_permissions(&self.lxcpath, std::fs::Permissions::from_mode(0o711))
            .await
            .map_err(io("making the lxcpath searchable"))
    }

    /// `secure_dir` for a container, with the map its configuration holds;
    /// one still being made (no configuration yet) is left as it is.
    pub async fn secure(&self, ct: &str) -> Result<(), BackendError> {
        let text = match tokio::fs::read_to_string(self.dir(ct).join("config")).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("reading the container configuration")(e)),
        };
        secure_dir(self.dir(ct), map_in_config(&text)).await
    }

    /// At startup: every container directory closed as `secure_dir` says
    /// (those made by lxgate versions that left them open included).
    pub async fn secure_all(&self) {
        if !tokio::fs::try_exists(&self.lxcpath).await.unwrap_or(false) {
            return;
        }
        if let Err(e) = self.ensure_lxcpath().await {
            tracing::warn!(error = %e, "cannot set the lxcpath's mode");
        }
        for ct in super::driver_types::instance_dirs(&self.lxcpath).await {
            if let Err(err) = self.secure(&ct).await {
                tracing::warn!(container = %ct, error = %err, "cannot close the container directory");
            }
        }
    }

    /// Whether root of a container under `map` can reach the lxcpath: LXC
    /// sets a container up as that host uid, so every directory above the
    /// rootfs must be searchable by it. Asked of the kernel (a process in
    /// such a namespace tries), so ACLs count; `Err` says what to fix.
    pub async fn reachable(&self, map: &IdMap) -> Result<(), String> {
        // Before the first container the lxcpath may not exist: its parent
        // (DATA_DIR) is what must be searchable then.
        let target = if tokio::fs::try_exists(&self.lxcpath).await.unwrap_or(false) {
            self.lxcpath.clone()
        } else {
            self.lxcpath
                .parent()
                .map_or_else(|| self.lxcpath.clone(), Path::to_path_buf)
        };
        let probe = Command::new("lxc-usernsexec")
            .args(map.usernsexec_args())
            .arg("--")
            .args(["test", "-x"])
            .arg(&target)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(TOOL_TIMEOUT, probe).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            // `test` answered no: the namespace worked, the path is closed.
            Ok(Ok(out)) if out.status.code() == Some(1) && out.stderr.is_empty() => Err(format!(
                "the containers' root (host uid {uid}) cannot reach {}: every directory on that path must be searchable by it (an ACL u:{uid}:x, as scripts/data-dir-setup.sh grants, opens it to that uid only)",
                target.display(),
                uid = map.uid_base,
            )),
            Ok(Ok(out)) => Err(format!(
                "lxc-usernsexec could not map the ids: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(Err(e)) => Err(format!("lxc-usernsexec could not run: {e}")),
            Err(_) => Err("lxc-usernsexec did not answer in time".into()),
        }
    }

    /// Unpacks the image's rootfs tarball into a new container directory and
    /// writes its configuration. `cancel` resolving aborts the unpacking.
    pub async fn create(
        &self,
        ct: &str,
        hostname: &str,
        rootfs_tarball: &Path,
        config: &ConfigMap,
        confinement: &Confinement,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(), BackendError> {
        let dir = self.dir(ct);
        let rootfs = self.rootfs(ct);
        self.ensure_lxcpath().await?;
        tokio::fs::create_dir(&dir)
            .await
            .map_err(io("creating the container directory"))?;
        // Closed before anything of the image lands in it.
        secure_dir(dir.clone(), confinement.map()).await?;
        tokio::fs::create_dir(&rootfs)
            .await
            .map_err(io("creating the rootfs directory"))?;
        // Read the way `image_size` measured it (`tarball::reading`): same
        // decompressor, same memory limit.
        let mut tar = match confinement {
            // Ownership and modes are kept as in the image (lxgate runs as
            // root).
            Confinement::Privileged => {
                let mut tar = tarball::reading(rootfs_tarball, &[]).await?;
                tar.arg("--extract").arg("--directory").arg(&rootfs);
                tar
            }
            // Unpacked inside the container's user namespace, so every file
            // is owned by the mapped ids with no shifting afterwards: root
            // there owns the (chowned) rootfs directory, and an id outside
            // the map fails the unpack instead of landing as a host id. The
            // tarball comes in on stdin and the rootfs is the working
            // directory, so the mapped root needs no access to DATA_DIR.
            Confinement::Unprivileged(map) => {
                let (uid, gid) = (map.uid_base, map.gid_base);
                let r = rootfs.clone();
                tokio::task::spawn_blocking(move || {
                    std::os::unix::fs::chown(&r, Some(uid), Some(gid))
                })
                .await
                .map_err(|e| BackendError::Internal(anyhow::anyhow!("chown task: {e}")))?
                .map_err(io("giving the rootfs to the container's root"))?;
                let map_args = map.usernsexec_args();
                let mut wrapper: Vec<&OsStr> = vec![OsStr::new("lxc-usernsexec")];
                wrapper.extend(map_args.iter().map(OsStr::new));
                wrapper.push(OsStr::new("--"));
                let mut tar = tarball::reading(rootfs_tarball, &wrapper).await?;
                tar.arg("--extract")
                    .args(UNPRIVILEGED_EXCLUDES)
                    .current_dir(&rootfs);
                tar
            }
        };
        tar.args(["--numeric-owner", "--preserve-permissions", "--xattrs"]);
        let (mut child, mut group) =
            process::ProcessGroup::spawn(&mut tar).map_err(io("running tar"))?;
        // Dropping this future (the operation went away) drops `group`,
        // which kills tar too, not only lxc-usernsexec.
        tokio::select! {
            out = group.finish(&mut child) => {
                let (status, stderr) = out.map_err(io("running tar"))?;
                if !status.success() {
                    return Err(match process::tool_failed("unpacking the image's rootfs", status, &stderr) {
                        e @ BackendError::InsufficientStorage(_) => e,
                        _ => BackendError::BadRequest(format!(
                            "the image's rootfs could not be unpacked: {stderr}"
                        )),
                    });
                }
            }
            () = cancel => {
                // Gone (and reaped) before the caller removes the files.
                group.kill_and_wait(&mut child).await;
                return Err(BackendError::Conflict("cancelled".into()));
            }
        }
        self.write_config(ct, hostname, config, &Attachments::default(), confinement)
            .await
    }

    /// `devices`: the volumes and NICs attached to it, checked by the caller.
    pub async fn write_config(
        &self,
        ct: &str,
        hostname: &str,
        config: &ConfigMap,
        devices: &Attachments,
        confinement: &Confinement,
    ) -> Result<(), BackendError> {
        let dir = self.dir(ct);
        let apparmor = self.apparmor().await;
        let text = render_config(&dir, hostname, config, devices, confinement, apparmor)?;
        tokio::fs::write(dir.join("config"), text)
            .await
            .map_err(io("writing the container configuration"))
    }

    pub async fn info(&self, ct: &str) -> Result<LxcInfo, BackendError> {
        let changes = self.changes_of(ct);
        let info = match lxc_monitor::up(&self.lxcpath, ct) {
            // What `lxc-info` answers on the same refusal, without its process.
            Some(false) => LxcInfo::stopped(),
            _ => {
                let mut args = self.base_args(ct);
                args.push("-H".as_ref());
                let out = run("lxc-info", args, TOOL_TIMEOUT).await?;
                parse_info(&out.stdout)
            }
        };
        self.keep(ct, changes, &info);
        Ok(info)
    }

    /// For listings, what is known of `ct` without a process: a state read
    /// in the last `INFO_TTL`, or STOPPED when no monitor listens for it
    /// (whether or not its files exist: without them it is not running
    /// either).
    pub fn known(&self, ct: &str) -> Option<LxcInfo> {
        if let Some(info) = self.recent(ct) {
            return Some(info);
        }
        let changes = self.changes_of(ct);
        (lxc_monitor::up(&self.lxcpath, ct) == Some(false)).then(|| {
            let info = LxcInfo::stopped();
            self.keep(ct, changes, &info);
            info
        })
    }

    /// Keeps what was read of `ct` for listings, unless a change began
    /// since the read did (`changes`, read before it) or is under way.
    fn keep(&self, ct: &str, changes: u64, info: &LxcInfo) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        // Under the lock `forget` takes: a change made while this read ran
        // either moved the count already or comes after this insert.
        if self.changes_of(ct) == changes
            && !self
                .changing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(ct)
        {
            recent.insert(ct.to_owned(), (std::time::Instant::now(), info.clone()));
        }
    }

    pub async fn start(&self, ct: &str) -> Result<(), BackendError> {
        // Cheap and idempotent; a container restored, renamed or made by
        // an older lxgate starts closed all the same.
        self.secure(ct).await?;
        let log = self.dir(ct).join("lxc.log");
        let mut args = self.base_args(ct);
        args.extend([std::ffi::OsStr::new("-d"), "-o".as_ref(), log.as_os_str()]);
        args.extend(["-l", "INFO"].map(std::ffi::OsStr::new));
        run("lxc-start", args, TOOL_TIMEOUT).await.map(|_| ())
    }

    /// A clean shutdown within `timeout` seconds, then a kill; `force` kills at once.
    pub async fn stop(&self, ct: &str, timeout: i64, force: bool) -> Result<(), BackendError> {
        let mut args: Vec<std::ffi::OsString> =
            self.base_args(ct).into_iter().map(Into::into).collect();
        if force {
            args.push("--kill".into());
        } else {
            args.push("--timeout".into());
            args.push(timeout.clamp(0, 3600).to_string().into());
        }
        let limit = Duration::from_secs(timeout.clamp(0, 3600) as u64) + TOOL_TIMEOUT;
        run("lxc-stop", args, limit).await.map(|_| ())
    }

    pub async fn freeze(&self, ct: &str) -> Result<(), BackendError> {
        run("lxc-freeze", self.base_args(ct), TOOL_TIMEOUT)
            .await
            .map(|_| ())
    }

    pub async fn unfreeze(&self, ct: &str) -> Result<(), BackendError> {
        run("lxc-unfreeze", self.base_args(ct), TOOL_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// Removes a stopped container and its files.
    pub async fn destroy(&self, ct: &str) -> Result<(), BackendError> {
        let dir = self.dir(ct);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing the container")(e)),
        }
    }

    pub async fn rename(&self, ct: &str, new_ct: &str) -> Result<(), BackendError> {
        tokio::fs::rename(self.dir(ct), self.dir(new_ct))
            .await
            .map_err(io("renaming the container directory"))
    }

    /// `lxc-attach` arguments for a command: a clean environment, then the
    /// request's variables, user and group.
    fn attach_args(&self, ct: &str, req: &ExecRequest, interactive: bool) -> Vec<String> {
        let mut args = vec![
            "-P".to_owned(),
            self.lxcpath.display().to_string(),
            "-n".to_owned(),
            ct.to_owned(),
            "--clear-env".to_owned(),
        ];
        let mut env = vec![
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ),
            ("HOME", "/root".to_owned()),
        ];
        if interactive {
            env.push(("TERM", "xterm-256color".to_owned()));
        }
        for (k, v) in &env {
            if !req.environment.contains_key(*k) {
                args.push(format!("--set-var={k}={v}"));
            }
        }
        for (k, v) in &req.environment {
            args.push(format!("--set-var={k}={v}"));
        }
        if let Some(uid) = req.user {
            args.push(format!("--uid={uid}"));
        }
        if let Some(gid) = req.group {
            args.push(format!("--gid={gid}"));
        }
        args.push("--".to_owned());
        // lxc-attach has no working-directory option: let the container's
        // own shell change into it, the path passed as an argument.
        if let Some(cwd) = &req.cwd {
            args.extend([
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "cd \"$1\" && shift && exec \"$@\"".to_owned(),
                "sh".to_owned(),
                cwd.clone(),
            ]);
        }
        args.extend(req.command.iter().cloned());
        args
    }

    pub fn exec_interactive(
        &self,
        ct: &str,
        req: &ExecRequest,
        size: (u32, u32),
    ) -> Result<TerminalSession, BackendError> {
        process::spawn_terminal("lxc-attach", self.attach_args(ct, req, true), size, true)
    }

    pub async fn exec_recorded(
        &self,
        ct: &str,
        req: &ExecRequest,
        rec: process::Recording<'_>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<process::Recorded, BackendError> {
        let mut cmd = Command::new("lxc-attach");
        cmd.args(self.attach_args(ct, req, false));
        process::run_recorded(cmd, rec, cancel).await
    }

    /// The container's console (`/dev/console`, where its init talks).
    pub fn console(&self, ct: &str, size: (u32, u32)) -> Result<TerminalSession, BackendError> {
        let mut args: Vec<std::ffi::OsString> =
            self.base_args(ct).into_iter().map(Into::into).collect();
        // tty 0 is the console; the escape is Ctrl-a q as in lxc-console.
        args.extend(["-t".into(), "0".into()]);
        process::spawn_terminal("lxc-console", args, size, false)
    }
}

/// Who may enter a container's directory (`<lxcpath>/<ct>`), as Incus has
/// it. Its rootfs holds whatever the tenant put there, setuid binaries of
/// the tenant's root included; any host user who could walk into it could
/// run them, as the mapped root (which owns every file of every container
/// on the shared map) or, for a privileged container, as host root. So:
///
/// * unprivileged: owned by the mapped root, mode `0100`: that uid may
///   pass through to the rootfs (LXC sets the container up as it), nobody
///   else may, not even list it; host root passes anyway.
/// * privileged: root's, `0700`.
/// * `snapshots/` and `backups/` (copies of the rootfs, tarballs with the
///   container's `/etc/shadow`): root's, `0700`, each backup `0600`; the
///   mapped root never needs them (copies reach them by descriptor).
///
/// Idempotent: run on creation, at every start and at lxgate's start, so
/// containers made by earlier versions are closed too.
pub async fn secure_dir(dir: PathBuf, map: Option<IdMap>) -> Result<(), BackendError> {
    tokio::task::spawn_blocking(move || secure_dir_blocking(&dir, map))
        .await
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("permissions task: {e}")))?
        .map_err(io("closing the container directory to other users"))
}

fn secure_dir_blocking(dir: &Path, map: Option<IdMap>) -> std::io::Result<()> {
    use std::os::unix::fs::{PermissionsExt, lchown};
    let set = |p: &Path, uid: u32, gid: u32, mode: u32| {
        // Only what lxgate made: a directory (or file) of its own, never
        // followed if something put a link in its place.
        lchown(p, Some(uid), Some(gid))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
    };
    if !std::fs::symlink_metadata(dir)?.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    match map {
        Some(m) => set(dir, m.uid_base, m.gid_base, 0o100)?,
        None => set(dir, 0, 0, 0o700)?,
    }
    for sub in ["snapshots", "backups"] {
        let sub = dir.join(sub);
        match std::fs::symlink_metadata(&sub) {
            Ok(m) if m.is_dir() => set(&sub, 0, 0, 0o700)?,
            _ => continue,
        }
        for e in std::fs::read_dir(&sub)?.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_file() {
                set(&e.path(), 0, 0, 0o600)?;
            } else if t.is_dir() {
                // A snapshot's own directory; its rootfs keeps the
                // container's owners.
                set(&e.path(), 0, 0, 0o700)?;
            }
        }
    }
    Ok(())
}

/// The id map a container's LXC configuration gives it (`lxc.idmap` lines
/// for uid and gid 0), None for a privileged one: what LXC will run it as.
pub fn map_in_config(text: &str) -> Option<IdMap> {
    let mut uid = None;
    let mut gid = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim() != "lxc.idmap" {
            continue;
        }
        let f: Vec<&str> = v.split_whitespace().collect();
        let [kind, "0", base, size] = f.as_slice() else {
            continue;
        };
        let (Ok(base), Ok(size)) = (base.parse::<u32>(), size.parse::<u32>()) else {
            continue;
        };
        match *kind {
            "u" => uid = Some((base, size)),
            "g" => gid = Some((base, size)),
            _ => {}
        }
    }
    let ((uid_base, size), (gid_base, gsize)) = (uid?, gid?);
    (size == gsize).then_some(IdMap {
        uid_base,
        gid_base,
        size,
    })
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> BackendError {
    move |e| BackendError::Internal(anyhow::anyhow!("{what}: {e}"))
}

/// LXC's default configuration files, where the unprivileged
/// configuration includes them from, or which is missing.
pub async fn defaults_installed() -> Result<(), String> {
    for f in [COMMON_CONF, USERNS_CONF] {
        if !tokio::fs::try_exists(f).await.unwrap_or(false) {
            return Err(format!("LXC's default configuration {f} is not installed"));
        }
    }
    Ok(())
}

/// Parses `lxc-info -H` (raw numbers) output.
pub fn parse_info(text: &str) -> LxcInfo {
    let mut info = LxcInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "State" => info.state = value.to_owned(),
            "PID" => info.pid = value.parse().ok(),
            "CPU use" => info.cpu_ns = value.parse().unwrap_or(0),
            "Memory use" => info.memory = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    info
}

/// Incus's status name and code for an LXC state.
pub fn status_of(state: &str) -> (&'static str, i64) {
    match state {
        "RUNNING" => ("Running", 103),
        "FROZEN" => ("Frozen", 110),
        "STARTING" => ("Starting", 106),
        "STOPPING" => ("Stopping", 107),
        "ABORTING" => ("Aborting", 108),
        "FREEZING" => ("Freezing", 109),
        "THAWED" => ("Running", 103),
        "STOPPED" => ("Stopped", 102),
        _ => ("Error", 112),
    }
}

/// Config keys a user may set on an embedded instance.
pub fn check_config(config: &ConfigMap) -> Result<(), BackendError> {
    for (key, value) in config {
        let ok = match key.as_str() {
            "limits.memory" => parse_size(value).is_some(),
            "limits.cpu" => parse_cpus(value).is_some(),
            "limits.processes" => value.parse::<u32>().is_ok_and(|n| n > 0),
            "boot.autostart" => matches!(value.as_str(), "true" | "false"),
            // Read when a container is created; changing it later is refused
            // where updates are handled (the rootfs would need shifting).
            "security.privileged" => matches!(value.as_str(), "true" | "false"),
            // Which id map a container gets (see idmap.rs); fixed at creation too.
            "security.idmap.isolated" => matches!(value.as_str(), "true" | "false"),
            k if k.starts_with("user.") || k.starts_with("environment.") => {
                !value.contains('\0') && key.len() <= 255
            }
            _ => {
                return Err(BackendError::BadRequest(format!(
                    "Unknown configuration key: {key}"
                )));
            }
        };
        if !ok {
            return Err(BackendError::BadRequest(format!(
                "Invalid value for configuration key {key}: {value:?}"
            )));
        }
    }
    Ok(())
}

/// The LXC configuration lxgate writes for a container. No network device
/// unless one is attached; cgroup v1 keys (this host family is v1/hybrid:
/// cgroup2 keys are silently ignored there).
pub fn render_config(
    dir: &Path,
    hostname: &str,
    config: &ConfigMap,
    devices: &Attachments,
    confinement: &Confinement,
    apparmor: bool,
) -> Result<String, BackendError> {
    check_config(config)?;
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        out.push_str(k);
        out.push_str(" = ");
        out.push_str(v);
        out.push('\n');
    };
    // First, so that lxgate's own lines below override the defaults they
    // bring (the tty and pty counts). A privileged container keeps exactly
    // the configuration it was made with.
    if let Confinement::Unprivileged(map) = confinement {
        line("lxc.include", COMMON_CONF);
        line("lxc.include", USERNS_CONF);
        for l in map.lxc_lines() {
            line("lxc.idmap", &l);
        }
        // The includes bring lxcfs's post-stop hook (common.conf.d), a
        // script that only sleeps 0.5 s for lxcfs's handling of in-place
        // reboots, which lxgate never asks for (a restart is a stop and a
        // start): every stop waited on it (524 ms against 21 ms for a
        // forced one). An empty value clears the hooks set so far.
        line("lxc.hook.post-stop", "");
    }
    line("lxc.uts.name", hostname);
    line(
        "lxc.rootfs.path",
        &format!("dir:{}", dir.join("rootfs").display()),
    );
    line("lxc.init.cmd", "/sbin/init");
    if devices.nics.is_empty() {
        line("lxc.net.0.type", "empty");
    }
    // A veth pair per NIC, its host end in the bridge; LXC sets the address
    // and (first NIC with one only: one default route) the gateway.
    let mut gateway_set = false;
    for (i, nic) in devices.nics.iter().enumerate() {
        let key = |k: &str| format!("lxc.net.{i}.{k}");
        line(&key("type"), "veth");
        line(&key("link"), &nic.bridge);
        line(&key("veth.pair"), &nic.host_if);
        line(&key("name"), &nic.name);
        line(&key("hwaddr"), &nic.hwaddr);
        line(&key("flags"), "up");
        if let Some(a) = nic.ipv4 {
            line(&key("ipv4.address"), &a.to_string());
            if let Some(gw) = nic.gateway
                && !gateway_set
            {
                line(&key("ipv4.gateway"), &gw.to_string());
                gateway_set = true;
            }
        }
    }
    line("lxc.mount.auto", "proc:mixed sys:mixed");
    line("lxc.pty.max", "64");
    line("lxc.tty.max", "0");
    line(
        "lxc.console.logfile",
        &dir.join("console.log").display().to_string(),
    );
    // Without AppArmor in the kernel LXC refuses any profile but this.
    if !apparmor {
        line("lxc.apparmor.profile", "unconfined");
    }
    if let Some(v) = config.get("limits.memory").and_then(|v| parse_size(v)) {
        line("lxc.cgroup.memory.limit_in_bytes", &v.to_string());
    }
    if let Some(v) = config.get("limits.cpu").and_then(|v| parse_cpus(v)) {
        line("lxc.cgroup.cpuset.cpus", &v);
    }
    if let Some(v) = config.get("limits.processes") {
        line("lxc.cgroup.pids.max", v);
    }
    // fstab syntax: fields split on whitespace, so a space is written \040.
    let field = |s: &str| s.replace(' ', "\\040");
    for (host, target) in &devices.mounts {
        line(
            "lxc.mount.entry",
            &format!(
                "{} {} none bind,create=dir 0 0",
                field(&host.display().to_string()),
                field(target.trim_start_matches('/'))
            ),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::embedded::networks::Nic;

    #[test]
    fn info_is_parsed() {
        let i = parse_info(
            "Name:           default_c1\nState:          RUNNING\nPID:            4242\nCPU use:        123456789\nMemory use:     1048576\n",
        );
        assert_eq!(i.state, "RUNNING");
        assert_eq!(i.pid, Some(4242));
        assert_eq!(i.cpu_ns, 123456789);
        assert_eq!(i.memory, 1048576);
        assert_eq!(parse_info("State: STOPPED\n").pid, None);
    }

    const P: Confinement = Confinement::Privileged;

    #[test]
    fn unprivileged_config_maps_ids_and_includes_lxc_defaults() {
        let map = IdMap {
            uid_base: 1_000_000,
            gid_base: 1_000_000,
            size: 65536,
        };
        let u = Confinement::Unprivileged(map);
        let text = render_config(
            Path::new("/d/default_c1"),
            "c1",
            &ConfigMap::new(),
            &Attachments::default(),
            &u,
            false,
        )
        .unwrap();
        assert!(
            text.starts_with(
                "lxc.include = /usr/share/lxc/config/common.conf\n\
                 lxc.include = /usr/share/lxc/config/userns.conf\n\
                 lxc.idmap = u 0 1000000 65536\n\
                 lxc.idmap = g 0 1000000 65536\n"
            ),
            "{text}"
        );
        // lxgate's own tty counts come after the includes, so they win.
        assert!(text.contains("lxc.tty.max = 0\n"), "{text}");
        // And lxcfs's sleeping post-stop hook is cleared.
        assert!(text.contains("\nlxc.hook.post-stop = \n"), "{text}");
        // A privileged container's config has none of it: the same text as
        // before lxgate mapped ids.
        let old = render_config(
            Path::new("/d/default_c1"),
            "c1",
            &ConfigMap::new(),
            &Attachments::default(),
            &P,
            false,
        )
        .unwrap();
        assert!(
            !old.contains("lxc.idmap") && !old.contains("lxc.include"),
            "{old}"
        );
        assert!(old.starts_with("lxc.uts.name = c1\n"), "{old}");
        assert!(text.ends_with(&old), "{text}");
    }

    #[test]
    fn the_map_is_read_back_from_the_config() {
        let map = IdMap {
            uid_base: 1_000_000,
            gid_base: 2_000_000,
            size: 65536,
        };
        let none = Attachments::default();
        let text = render_config(
            Path::new("/d/default_c1"),
            "c1",
            &ConfigMap::new(),
            &none,
            &Confinement::Unprivileged(map),
            true,
        )
        .unwrap();
        assert_eq!(map_in_config(&text), Some(map));
        assert!(!text.contains("lxc.apparmor.profile"), "{text}");
        let old =
            render_config(Path::new("/d"), "c1", &ConfigMap::new(), &none, &P, false).unwrap();
        assert_eq!(map_in_config(&old), None);
        assert!(old.contains("lxc.apparmor.profile = unconfined\n"), "{old}");
        // Half a map, or one at another container id, is no map.
        assert_eq!(map_in_config("lxc.idmap = u 0 1000000 65536\n"), None);
        assert_eq!(
            map_in_config("lxc.idmap = u 1 1000000 65536\nlxc.idmap = g 1 1000000 65536\n"),
            None
        );
    }

    #[test]
    fn unpacks_in_a_namespace_leave_dev_out() {
        assert_eq!(UNPRIVILEGED_EXCLUDES[0], "--anchored");
        for spelling in ["./dev/*", "dev/*", "/dev/*"] {
            assert!(
                UNPRIVILEGED_EXCLUDES.contains(&format!("--exclude={spelling}").as_str()),
                "{spelling}"
            );
        }
    }

    #[test]
    fn security_keys_are_checked() {
        let with = |k: &str, v: &str| ConfigMap::from([(k.to_owned(), v.to_owned())]);
        assert!(check_config(&with("security.privileged", "true")).is_ok());
        assert!(check_config(&with("security.privileged", "false")).is_ok());
        assert!(matches!(
            check_config(&with("security.privileged", "yes")),
            Err(BackendError::BadRequest(_))
        ));
        assert!(check_config(&with("security.idmap.isolated", "false")).is_ok());
        assert!(check_config(&with("security.idmap.isolated", "true")).is_ok());
        assert!(check_config(&with("security.idmap.isolated", "1")).is_err());
        assert!(check_config(&with("security.nesting", "true")).is_err());
    }

    #[test]
    fn config_keys_are_checked_and_rendered() {
        let mut c = ConfigMap::new();
        c.insert("limits.memory".into(), "64MiB".into());
        c.insert("limits.cpu".into(), "1".into());
        let mut devices = Attachments {
            mounts: vec![(
                PathBuf::from("/s/my pool/custom/default_v"),
                "/srv/data".to_owned(),
            )],
            nics: vec![],
        };
        let text =
            render_config(Path::new("/d/default_c1"), "c1", &c, &devices, &P, false).unwrap();
        assert!(
            text.contains(
                "lxc.mount.entry = /s/my\\040pool/custom/default_v srv/data none bind,create=dir 0 0\n"
            ),
            "{text}"
        );
        assert!(text.contains("lxc.cgroup.memory.limit_in_bytes = 67108864\n"));
        assert!(text.contains("lxc.cgroup.cpuset.cpus = 0-0\n"));
        assert!(text.contains("lxc.rootfs.path = dir:/d/default_c1/rootfs\n"));
        assert!(text.contains("lxc.net.0.type = empty\n"));
        // Two NICs: veth pairs, one default route only.
        let nic = |dev: &str, addr: &str| Nic {
            device: dev.into(),
            bridge: "br0".into(),
            name: dev.into(),
            hwaddr: "10:66:6a:00:00:01".into(),
            host_if: format!("lxg{dev}"),
            ipv4: Some(addr.parse().unwrap()),
            gateway: Some("10.5.0.1".parse().unwrap()),
        };
        devices.nics = vec![nic("eth0", "10.5.0.2/24"), nic("eth1", "10.5.0.3/24")];
        let text =
            render_config(Path::new("/d/default_c1"), "c1", &c, &devices, &P, false).unwrap();
        assert!(!text.contains("type = empty"), "{text}");
        for want in [
            "lxc.net.0.type = veth\n",
            "lxc.net.0.link = br0\n",
            "lxc.net.0.veth.pair = lxgeth0\n",
            "lxc.net.0.ipv4.address = 10.5.0.2/24\n",
            "lxc.net.0.ipv4.gateway = 10.5.0.1\n",
            "lxc.net.1.name = eth1\n",
            "lxc.net.1.ipv4.address = 10.5.0.3/24\n",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        assert!(!text.contains("lxc.net.1.ipv4.gateway"), "{text}");
        let none = Attachments::default();
        c.insert("lxc.hook.start".into(), "/bin/evil".into());
        assert!(render_config(Path::new("/d"), "c1", &c, &none, &P, false).is_err());
        let mut c = ConfigMap::new();
        c.insert("limits.processes".into(), "10\nlxc.x = y".into());
        assert!(render_config(Path::new("/d"), "c1", &c, &none, &P, false).is_err());
    }
}
