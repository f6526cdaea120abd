//! The KVM driver: one daemonized `qemu-system-x86_64` per VM, controlled
//! over its QMP unix socket, its serial console on another unix socket (and
//! logged to a file). KVM where the host really supports it, TCG otherwise
//! (see detect.rs). Files live in `DATA_DIR/vms/<project>_<name>/`; the
//! running state is read from the pidfile and QMP every time, so a restarted
//! lxgate finds its VMs again.
//!
//! QEMU runs under its seccomp sandbox (no exec or fork, no obsolete system
//! calls, no scheduler/resource changes) and, where the host has the
//! `lxgate-qemu` user and lxgate is root, drops to that user once it has
//! opened its disks, sockets and taps (`-run-with user=`), so a guest that
//! escapes into QEMU holds neither root nor the means to start programs.
//! Both rule out `-daemonize`, which forks (and setsid()s) after the sandbox
//! is in place: lxgate starts QEMU in a session of its own instead and
//! waits for QMP to answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::bridge;
use super::driver_types::{Attachments, LxcInfo};
use super::limits::parse_size;
use super::process::run;
use crate::backend::BackendError;
use crate::backend::types::{ConfigMap, TerminalInput, TerminalSession};

const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a starting QEMU may take to answer on QMP.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long copying a VM's disk may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(3600);
/// Memory when `limits.memory` is not set.
const DEFAULT_MEMORY_MIB: u64 = 256;

/// How a VM boots, written next to its disk when it is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Boot {
    /// From its own qcow2 disk (an overlay on the image's).
    Disk,
    /// Straight into a kernel and initrd, with a command line.
    Kernel { cmdline: String },
}

pub struct Qemu {
    dir: PathBuf,
    accel: crate::config::VmAccel,
    /// The user QEMU drops to (None: stays root), looked up once.
    user: tokio::sync::OnceCell<Option<&'static str>>,
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> BackendError {
    move |e| BackendError::Internal(anyhow::anyhow!("{what}: {e}"))
}

impl Qemu {
    pub fn new(dir: PathBuf, accel: crate::config::VmAccel) -> Self {
        Self {
            dir,
            accel,
            user: tokio::sync::OnceCell::new(),
        }
    }

    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.dir.join(vm)
    }

    fn qmp_path(&self, vm: &str) -> PathBuf {
        self.vm_dir(vm).join("qmp.sock")
    }

    pub fn console_path(&self, vm: &str) -> PathBuf {
        self.vm_dir(vm).join("console.sock")
    }

    /// `vms/` itself: lxgate's, 0700 (see `close_vm_dir`).
    async fn close_root(&self) -> Result<(), BackendError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::PermissionsExt;
            if !std::fs::symlink_metadata(&dir)?.is_dir() {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            let (uid, gid) = super::idmap::lxgate_ids();
            std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        })
        .await
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("permissions task: {e}")))?
        .map_err(io("closing the VMs' directory"))
    }

    /// A VM's directory closed as `close_vm_dir` says; idempotent.
    pub async fn secure(&self, vm: &str) -> Result<(), BackendError> {
        let dir = self.vm_dir(vm);
        tokio::task::spawn_blocking(move || close_vm_dir(&dir))
            .await
            .map_err(|e| BackendError::Internal(anyhow::anyhow!("permissions task: {e}")))?
            .map_err(io("closing the VM directory"))
    }

    /// At startup: `vms/` and every VM's directory closed (those made by
    /// lxgate versions that left them open included). A running VM is
    /// not disturbed: QEMU holds what it opened, lxgate talks to it as root.
    pub async fn secure_all(&self) {
        if !tokio::fs::try_exists(&self.dir).await.unwrap_or(false) {
            return;
        }
        if let Err(e) = self.close_root().await {
            tracing::warn!(error = %e, "cannot close the VMs' directory");
        }
        for vm in super::driver_types::instance_dirs(&self.dir).await {
            if let Err(err) = self.secure(&vm).await {
                tracing::warn!(vm = %vm, error = %err, "cannot close the VM directory");
            }
        }
    }

    /// Makes the VM's directory from a stored image: an overlay disk on the
    /// image's qcow2, or copies of its kernel and initrd.
    pub async fn create(
        &self,
        vm: &str,
        image_dir: &Path,
        boot: &Boot,
    ) -> Result<(), BackendError> {
        let dir = self.new_dir(vm).await?;
        match boot {
            Boot::Disk => {
                let base = image_dir.join("rootfs");
                run(
                    "qemu-img",
                    [
                        "create".as_ref(),
                        "-q".as_ref(),
                        "-f".as_ref(),
                        "qcow2".as_ref(),
                        "-F".as_ref(),
                        "qcow2".as_ref(),
                        "-b".as_ref(),
                        base.as_os_str(),
                        dir.join("root.qcow2").as_os_str(),
                    ],
                    Duration::from_secs(60),
                )
                .await?;
            }
            Boot::Kernel { .. } => {
                for f in ["kernel", "initrd"] {
                    tokio::fs::copy(image_dir.join("boot").join(f), dir.join(f))
                        .await
                        .map_err(io("copying the image's kernel and initrd"))?;
                }
            }
        }
        self.finish_dir(vm, boot).await
    }

    /// A new VM's directory, closed (0700 whatever the umask) before
    /// anything lands in it.
    async fn new_dir(&self, vm: &str) -> Result<PathBuf, BackendError> {
        let dir = self.vm_dir(vm);
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io("creating the VM directory"))?;
        self.close_root().await?;
        tokio::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .await
            .map_err(io("creating the VM directory"))?;
        self.secure(vm).await?;
        Ok(dir)
    }

    /// Writes how a new VM boots and closes what was made in its directory:
    /// an overlay (qemu-img makes it 0644) or copies (0644, as the image's
    /// files) become 0600, though nobody else could reach them.
    async fn finish_dir(&self, vm: &str, boot: &Boot) -> Result<(), BackendError> {
        let raw = serde_json::to_vec(boot).map_err(|e| BackendError::Internal(e.into()))?;
        tokio::fs::write(self.vm_dir(vm).join("boot.json"), raw)
            .await
            .map_err(io("writing boot.json"))?;
        self.secure(vm).await
    }

    /// Makes VM `vm` a copy of the stopped VM `from` (or of its disk's
    /// internal `snapshot`), independent of it: a disk is written anew with
    /// `qemu-img convert`, so the copy carries no snapshots and shares no
    /// file with the source but the stored image `image` (the base of
    /// lxgate's overlays, which the image's users keep from deletion). The
    /// source's disk must be what lxgate makes: an overlay on exactly that
    /// image, or a disk with no backing file (then copied whole); anything
    /// else is refused, so a copy never names a file lxgate did not put
    /// there. A VM booting a kernel has its kernel and initrd copied.
    pub async fn copy(
        &self,
        from: &str,
        vm: &str,
        snapshot: Option<&str>,
        image: Option<&Path>,
    ) -> Result<(), BackendError> {
        let boot = self.boot(from).await?;
        if snapshot.is_some() && boot != Boot::Disk {
            return Err(BackendError::BadRequest(
                "this VM boots from a kernel and initrd and has no disk snapshots".into(),
            ));
        }
        let src = self.vm_dir(from);
        let dir = self.new_dir(vm).await?;
        match &boot {
            Boot::Disk => {
                self.export_disk(from, snapshot, image, &dir.join("root.qcow2"), true)
                    .await?;
            }
            Boot::Kernel { .. } => {
                for f in ["kernel", "initrd"] {
                    tokio::fs::copy(src.join(f), dir.join(f))
                        .await
                        .map_err(io("copying the VM's kernel and initrd"))?;
                }
            }
        }
        self.finish_dir(vm, &boot).await
    }

    /// Writes VM `from`'s disk (or its internal `snapshot`) to `out` as a
    /// new qcow2: with `rebase`, an overlay on the stored image `image`
    /// holding only what the VM's own layer holds (a copy); without, the
    /// whole disk standing alone (an image). The VM must be stopped. Its
    /// disk must be what lxgate makes: an overlay on exactly `image`, or a
    /// disk with no backing file; anything else is refused, so nothing is
    /// read from a file lxgate did not put there.
    pub async fn export_disk(
        &self,
        from: &str,
        snapshot: Option<&str>,
        image: Option<&Path>,
        out: &Path,
        rebase: bool,
    ) -> Result<(), BackendError> {
        let disk = self.vm_dir(from).join("root.qcow2");
        let base = match (backing_file(&disk).await?, image) {
            (None, _) => None,
            (Some(b), Some(image)) if b == image => Some(image),
            (Some(b), _) => {
                return Err(BackendError::Internal(anyhow::anyhow!(
                    "the disk of {from} has the backing file {}, not its image's",
                    b.display()
                )));
            }
        };
        let mut args: Vec<std::ffi::OsString> = vec![
            "convert".into(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            "-O".into(),
            "qcow2".into(),
        ];
        if let Some(s) = snapshot {
            // QEMU option syntax: a name with ',' or '=' would be read as
            // more options (names never have them).
            if s.contains([',', '=']) {
                return Err(BackendError::BadRequest(format!(
                    "invalid snapshot name {s:?}"
                )));
            }
            args.extend(["-l".into(), format!("snapshot.name={s}").into()]);
        }
        if let Some(base) = base.filter(|_| rebase) {
            // Only what the source's own layer holds is written; the rest
            // stays the image's.
            args.extend(["-B".into(), base.into(), "-F".into(), "qcow2".into()]);
        }
        args.extend([disk.into(), out.into()]);
        run("qemu-img", args, COPY_TIMEOUT).await.map(drop)
    }

    /// Makes an empty VM's directory: a blank qcow2 disk of `size` bytes,
    /// booted by the firmware (for an installer to fill).
    pub async fn create_blank(&self, vm: &str, size: u64) -> Result<(), BackendError> {
        let dir = self.new_dir(vm).await?;
        run(
            "qemu-img",
            [
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                dir.join("root.qcow2").as_os_str(),
                size.to_string().as_ref(),
            ],
            Duration::from_secs(60),
        )
        .await?;
        self.finish_dir(vm, &Boot::Disk).await
    }

    pub async fn boot(&self, vm: &str) -> Result<Boot, BackendError> {
        let raw = tokio::fs::read(self.vm_dir(vm).join("boot.json"))
            .await
            .map_err(io("reading boot.json"))?;
        serde_json::from_slice(&raw).map_err(|e| BackendError::Internal(e.into()))
    }

    /// The QEMU command line (arguments only; every value comes from
    /// lxgate's own paths or validated config).
    pub fn args(
        &self,
        vm: &str,
        boot: &Boot,
        config: &ConfigMap,
        accel: &str,
        devices: &Attachments,
        user: Option<&str>,
    ) -> Result<Vec<String>, BackendError> {
        let dir = self.vm_dir(vm);
        // QEMU option strings split on ',': a comma in a path is doubled.
        let p = |f: &str| dir.join(f).display().to_string().replace(',', ",,");
        let (memory_mib, cpus) = vm_resources(config)?;
        let mut args: Vec<String> = [
            "-name",
            vm,
            "-accel",
            accel,
            "-m",
            &memory_mib.to_string(),
            "-smp",
            &cpus.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-pidfile",
            &dir.join("qemu.pid").display().to_string(),
            "-qmp",
            &format!("unix:{},server=on,wait=off", p("qmp.sock")),
            "-chardev",
            &format!(
                "socket,id=console,path={},server=on,wait=off,logfile={},logappend=on",
                p("console.sock"),
                p("console.log")
            ),
            "-serial",
            "chardev:console",
            "-D",
            &dir.join("qemu.log").display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        match boot {
            Boot::Disk => args.extend([
                "-drive".to_owned(),
                format!("file={},format=qcow2,if=virtio", p("root.qcow2")),
            ]),
            Boot::Kernel { cmdline } => args.extend([
                "-kernel".to_owned(),
                dir.join("kernel").display().to_string(),
                "-initrd".to_owned(),
                dir.join("initrd").display().to_string(),
                "-append".to_owned(),
                cmdline.clone(),
            ]),
        }
        // Attached block volumes, after the boot disk.
        for (d, _) in &devices.mounts {
            args.extend([
                "-drive".to_owned(),
                format!(
                    "file={},format=qcow2,if=virtio",
                    d.display().to_string().replace(',', ",,")
                ),
            ]);
        }
        // NICs: a tap each (QEMU creates it and it goes when QEMU does); the
        // guest is held (-S) until lxgate has put the taps into their bridges.
        for (i, nic) in devices.nics.iter().enumerate() {
            args.extend([
                "-netdev".to_owned(),
                format!(
                    "tap,id=net{i},ifname={},script=no,downscript=no",
                    nic.host_if
                ),
                "-device".to_owned(),
                format!("virtio-net-pci,netdev=net{i},mac={}", nic.hwaddr),
            ]);
        }
        if !devices.nics.is_empty() {
            args.push("-S".to_owned());
        }
        match user {
            // Switching users needs set*id(), which elevateprivileges=deny
            // forbids; after the switch QEMU holds no privilege to regain
            // (real, effective and saved ids all change) and spawn=deny
            // keeps it from exec'ing a set-uid program.
            Some(u) => args.extend([
                "-sandbox".to_owned(),
                "on,obsolete=deny,spawn=deny,resourcecontrol=deny".to_owned(),
                "-run-with".to_owned(),
                format!("user={u}"),
            ]),
            None => args.extend([
                "-sandbox".to_owned(),
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
                    .to_owned(),
            ]),
        }
        Ok(args)
    }

    pub async fn start(
        &self,
        vm: &str,
        config: &ConfigMap,
        devices: &Attachments,
    ) -> Result<(), BackendError> {
        let boot = self.boot(vm).await?;
        let (accel, _) = super::detect::choose_accel(self.accel).await;
        let user = *self.user.get_or_init(super::detect::qemu_user).await;
        let args = self.args(vm, &boot, config, accel, devices, user)?;
        // Stale sockets of an earlier run would make QEMU refuse to bind.
        for f in ["qmp.sock", "console.sock", "qemu.pid"] {
            let _ = tokio::fs::remove_file(self.vm_dir(vm).join(f)).await;
        }
        // Cheap and idempotent: a VM restored, copied, renamed or made by
        // an older lxgate starts closed all the same.
        self.secure(vm).await?;
        // The console log is made 0600 here, not by QEMU (which would make
        // it 0644 under the usual umask); QEMU appends to it (logappend=on),
        // opening it as root before it drops to its user.
        tokio::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(self.vm_dir(vm).join("console.log"))
            .await
            .map_err(io("creating console.log"))?;
        self.spawn(vm, args).await?;
        // What QEMU made (its sockets and pidfile, with the umask's modes)
        // 0600 too; a failure here leaves them behind the closed directory.
        if let Err(e) = self.secure(vm).await {
            tracing::warn!(vm = %vm, error = %e, "cannot close the VM's runtime files");
        }
        if devices.nics.is_empty() {
            return Ok(());
        }
        let mut plugged = Ok(());
        for nic in &devices.nics {
            plugged = bridge::enslave(&nic.host_if, &nic.bridge).await;
            if plugged.is_err() {
                break;
            }
        }
        let running = match plugged {
            Ok(()) => self.qmp(vm, "cont", None).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if running.is_err() {
            // Not left paused (it would read as Frozen) nor holding its taps:
            // quit, SIGKILL if need be, waited for.
            let _ = self.stop(vm, 0, true).await;
        }
        running
    }

    /// Starts QEMU in a session of its own (a Ctrl-C or SIGHUP meant for
    /// lxgate does not reach it; it outlives lxgate), its output going to
    /// `qemu.out`, and waits until QMP answers: QEMU has then opened
    /// everything and made its taps. A QEMU that exits first reports why.
    async fn spawn(&self, vm: &str, args: Vec<String>) -> Result<(), BackendError> {
        let out_path = self.vm_dir(vm).join("qemu.out");
        let out = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&out_path)
            .await
            .map_err(io("creating qemu.out"))?
            .into_std()
            .await;
        let err = out.try_clone().map_err(io("creating qemu.out"))?;
        let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
        cmd.args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .current_dir("/");
        // SAFETY: setsid() is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io("starting qemu-system-x86_64"))?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let said = tokio::fs::read_to_string(&out_path)
                    .await
                    .unwrap_or_default();
                return Err(BackendError::Internal(anyhow::anyhow!(
                    "qemu-system-x86_64 failed ({status}): {}",
                    said.trim()
                )));
            }
            if self.qmp(vm, "query-status", None).await.is_ok() {
                // Dropped, not killed: tokio reaps it when it exits.
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(BackendError::Timeout(format!(
                    "QEMU of {vm} did not answer on QMP within {}s",
                    START_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The QEMU process of this VM, if it runs: the pidfile's pid, checked
    /// against /proc so a recycled pid is never taken for the VM.
    pub async fn pid(&self, vm: &str) -> Option<i64> {
        let pidfile = self.vm_dir(vm).join("qemu.pid");
        let pid: i64 = tokio::fs::read_to_string(&pidfile)
            .await
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = tokio::fs::read(format!("/proc/{pid}/cmdline")).await.ok()?;
        let needle = pidfile.display().to_string();
        let ours = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == needle.as_bytes());
        ours.then_some(pid)
    }

    pub async fn info(&self, vm: &str) -> LxcInfo {
        let Some(pid) = self.pid(vm).await else {
            return LxcInfo {
                state: "STOPPED".into(),
                ..Default::default()
            };
        };
        let state = match self.qmp(vm, "query-status", None).await {
            Ok(r) if r["status"] == "paused" => "FROZEN",
            Ok(_) => "RUNNING",
            Err(_) => "RUNNING",
        };
        let (cpu_ns, memory) = proc_usage(pid).await;
        LxcInfo {
            state: state.into(),
            pid: Some(pid),
            cpu_ns,
            memory,
        }
    }

    /// One QMP command on a fresh connection (greeting, capabilities, command).
    pub async fn qmp(
        &self,
        vm: &str,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, BackendError> {
        let path = self.qmp_path(vm);
        let talk = async {
            let stream = UnixStream::connect(&path).await?;
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            lines.next_line().await?; // the greeting
            let mut send = async |v: Value| {
                let mut line = v.to_string();
                line.push('\n');
                w.write_all(line.as_bytes()).await
            };
            send(json!({"execute": "qmp_capabilities"})).await?;
            let mut cmd = json!({"execute": command});
            if let Some(a) = arguments {
                cmd["arguments"] = a;
            }
            let mut answered = 0;
            let mut sent = false;
            while let Some(line) = lines.next_line().await? {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if v.get("event").is_some() {
                    continue;
                }
                answered += 1;
                if answered == 1 {
                    send(cmd.clone()).await?;
                    sent = true;
                    continue;
                }
                if sent {
                    return Ok::<Value, std::io::Error>(v);
                }
            }
            Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
        };
        let v = tokio::time::timeout(QMP_TIMEOUT, talk)
            .await
            .map_err(|_| BackendError::Timeout(format!("QMP {command}")))?
            .map_err(|e| BackendError::Internal(anyhow::anyhow!("QMP {command}: {e}")))?;
        if let Some(err) = v.get("error") {
            return Err(BackendError::Internal(anyhow::anyhow!(
                "QMP {command}: {}",
                err["desc"].as_str().unwrap_or("error")
            )));
        }
        Ok(v["return"].clone())
    }

    async fn wait_exit(&self, vm: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.pid(vm).await.is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.pid(vm).await.is_none()
    }

    /// ACPI power button, then `quit` once `timeout` passes; `force` quits at once.
    pub async fn stop(&self, vm: &str, timeout: i64, force: bool) -> Result<(), BackendError> {
        if !force {
            let _ = self.qmp(vm, "system_powerdown", None).await;
            if self
                .wait_exit(vm, Duration::from_secs(timeout.clamp(0, 3600) as u64))
                .await
            {
                return Ok(());
            }
        }
        let _ = self.qmp(vm, "quit", None).await;
        if self.wait_exit(vm, Duration::from_secs(10)).await {
            return Ok(());
        }
        if let Some(pid) = self.pid(vm).await {
            // SAFETY: kill(2) on a pid we just confirmed is this VM's QEMU.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        if self.wait_exit(vm, Duration::from_secs(5)).await {
            Ok(())
        } else {
            Err(BackendError::Internal(anyhow::anyhow!(
                "QEMU of {vm} does not exit"
            )))
        }
    }

    pub async fn destroy(&self, vm: &str) -> Result<(), BackendError> {
        match tokio::fs::remove_dir_all(self.vm_dir(vm)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing the VM")(e)),
        }
    }

    pub async fn rename(&self, vm: &str, new_vm: &str) -> Result<(), BackendError> {
        tokio::fs::rename(self.vm_dir(vm), self.vm_dir(new_vm))
            .await
            .map_err(io("renaming the VM directory"))
    }

    /// The serial console, bridged to channels (QEMU serves one client at a time).
    pub async fn console(&self, vm: &str) -> Result<TerminalSession, BackendError> {
        let stream = UnixStream::connect(self.console_path(vm))
            .await
            .map_err(|e| BackendError::Conflict(format!("the console is not available: {e}")))?;
        let (mut r, mut w) = stream.into_split();
        let (input_tx, mut input_rx) = mpsc::channel::<TerminalInput>(64);
        let (output_tx, output_rx) = mpsc::channel::<Bytes>(64);
        tokio::spawn(async move {
            while let Some(input) = input_rx.recv().await {
                if let TerminalInput::Data(b) = input
                    && w.write_all(&b).await.is_err()
                {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if output_tx
                            .send(Bytes::copy_from_slice(&buf[..n]))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        Ok(TerminalSession {
            input: input_tx,
            output: output_rx,
            exit: None,
        })
    }
}

/// Who may enter a VM's directory: lxgate (root) only, as for a privileged
/// container's (`lxc::secure_dir`). It holds the guest's disk (the tenant's data, and
/// whatever the guest wrote), its console log, QMP and console sockets and
/// the pidfile; another host user reading the disk reads the tenant's
/// data. So: the directory and its subdirectories (`snapshots/`,
/// `backups/`) 0700, every file and socket in them 0600, all lxgate's.
/// QEMU opens everything it uses (disks, kernel, initrd, sockets, console
/// log, pidfile) as root before it drops to `lxgate-qemu`, and nothing by
/// path after that (snapshots are taken with qemu-img while the VM is
/// stopped; block volumes are attached at start; QMP only controls), so it
/// needs no access of its own. lxgate talks to the sockets as root.
/// Idempotent; links are never followed (nobody else can write here, but
/// nothing is assumed).
fn close_vm_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt, lchown};
    let (uid, gid) = super::idmap::lxgate_ids();
    let set = |p: &Path, mode: u32| {
        lchown(p, Some(uid), Some(gid))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
    };
    if !std::fs::symlink_metadata(dir)?.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    set(dir, 0o700)?;
    let close_files = |d: &Path, descend: bool| -> std::io::Result<Vec<PathBuf>> {
        let mut subdirs = Vec::new();
        for e in std::fs::read_dir(d)?.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_file() || t.is_socket() {
                set(&e.path(), 0o600)?;
            } else if t.is_dir() && descend {
                set(&e.path(), 0o700)?;
                subdirs.push(e.path());
            }
        }
        Ok(subdirs)
    };
    for sub in close_files(dir, true)? {
        close_files(&sub, false)?;
    }
    Ok(())
}

/// The backing file a qcow2 disk of lxgate's names (absolute, as QEMU
/// resolves it), if any.
async fn backing_file(disk: &Path) -> Result<Option<PathBuf>, BackendError> {
    let out = super::qcow::info_json(disk, Duration::from_secs(30)).await?;
    let info: Value = serde_json::from_str(&out)
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("qemu-img info output: {e}")))?;
    Ok(info["full-backing-filename"]
        .as_str()
        .or(info["backing-filename"].as_str())
        .map(PathBuf::from))
}

/// A VM's memory (MiB) and CPU count from its config: `limits.memory` as
/// for containers, `limits.cpu` a count (a VM has no CPU set to pin).
pub fn vm_resources(config: &ConfigMap) -> Result<(u64, u32), BackendError> {
    let memory_mib = match config.get("limits.memory") {
        Some(v) => parse_size(v)
            .map(|b| (b / (1 << 20)).max(32))
            .ok_or_else(|| BackendError::BadRequest(format!("invalid limits.memory {v:?}")))?,
        None => DEFAULT_MEMORY_MIB,
    };
    let cpus = match config.get("limits.cpu") {
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| {
                BackendError::BadRequest(format!(
                    "limits.cpu for a VM is a CPU count (1-64), not {v:?}"
                ))
            })?,
        None => 1,
    };
    Ok((memory_mib, cpus))
}

/// CPU time (ns) and resident memory (bytes) of the QEMU process.
async fn proc_usage(pid: i64) -> (i64, i64) {
    let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
        .await
        .unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    let cpu_ns = (ticks(11) + ticks(12)) * (1_000_000_000 / hz);
    let rss_pages = ticks(21);
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1);
    (cpu_ns, rss_pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_directory_is_closed_without_following_links() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        let open = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        };
        let tmp = tempfile::tempdir().unwrap();
        let (vm, outside) = (tmp.path().join("default_v"), tmp.path().join("outside"));
        std::fs::create_dir_all(vm.join("snapshots")).unwrap();
        for f in [
            vm.join("root.qcow2"),
            vm.join("snapshots/s.json"),
            outside.clone(),
        ] {
            std::fs::write(&f, b"x").unwrap();
            open(&f, 0o644);
        }
        std::os::unix::fs::symlink(&outside, vm.join("link")).unwrap();
        let sock = std::os::unix::net::UnixListener::bind(vm.join("qmp.sock")).unwrap();
        open(&vm, 0o755);
        open(&vm.join("snapshots"), 0o755);
        close_vm_dir(&vm).unwrap();
        assert_eq!(mode(&vm), 0o700);
        assert_eq!(mode(&vm.join("snapshots")), 0o700);
        for f in ["root.qcow2", "snapshots/s.json", "qmp.sock"] {
            assert_eq!(mode(&vm.join(f)), 0o600, "{f}");
        }
        assert_eq!(mode(&outside), 0o644, "a link is not followed");
        // Idempotent; a link in the directory's place is refused.
        close_vm_dir(&vm).unwrap();
        drop(sock);
        std::os::unix::fs::symlink(&vm, tmp.path().join("alias")).unwrap();
        assert!(close_vm_dir(&tmp.path().join("alias")).is_err());
    }

    #[test]
    fn command_line_from_config() {
        let q = Qemu::new(PathBuf::from("/d/vms"), crate::config::VmAccel::Tcg);
        let mut c = ConfigMap::new();
        c.insert("limits.memory".into(), "512MiB".into());
        c.insert("limits.cpu".into(), "2".into());
        let a = q
            .args(
                "default_v1",
                &Boot::Kernel {
                    cmdline: "console=ttyS0".into(),
                },
                &c,
                "tcg",
                &Attachments::default(),
                None,
            )
            .unwrap();
        let joined = a.join(" ");
        assert!(joined.contains("-accel tcg -m 512 -smp 2"), "{joined}");
        assert!(
            joined.contains("-kernel /d/vms/default_v1/kernel"),
            "{joined}"
        );
        assert!(joined.contains("-append console=ttyS0"), "{joined}");
        assert!(
            joined.contains("-pidfile /d/vms/default_v1/qemu.pid"),
            "{joined}"
        );
        c.insert("limits.cpu".into(), "0-1".into());
        assert!(
            q.args(
                "default_v1",
                &Boot::Disk,
                &c,
                "tcg",
                &Attachments::default(),
                None
            )
            .is_err()
        );
        let extra = Attachments {
            mounts: vec![(PathBuf::from("/s/custom/default_b.qcow2"), String::new())],
            nics: vec![crate::backend::embedded::networks::Nic {
                device: "eth0".into(),
                bridge: "br0".into(),
                name: "eth0".into(),
                hwaddr: "10:66:6a:00:00:01".into(),
                host_if: "lxgabc".into(),
                ipv4: None,
                gateway: None,
            }],
        };
        let d = q
            .args(
                "default_v1",
                &Boot::Disk,
                &ConfigMap::new(),
                "tcg",
                &extra,
                Some("lxgate-qemu"),
            )
            .unwrap()
            .join(" ");
        assert!(
            d.contains("-drive file=/s/custom/default_b.qcow2,format=qcow2,if=virtio -netdev tap,id=net0,ifname=lxgabc,script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=10:66:6a:00:00:01 -S"),
            "{d}"
        );
        assert!(
            d.contains("file=/d/vms/default_v1/root.qcow2,format=qcow2,if=virtio"),
            "{d}"
        );
        assert!(d.contains("-m 256 -smp 1"), "{d}");
        // Sandboxed either way; the set*id() ban only where QEMU stays root.
        assert!(
            d.ends_with("-sandbox on,obsolete=deny,spawn=deny,resourcecontrol=deny -run-with user=lxgate-qemu"),
            "{d}"
        );
        assert!(
            joined.ends_with(
                "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
            ),
            "{joined}"
        );
        assert!(!joined.contains("-daemonize"), "{joined}");
    }
}
