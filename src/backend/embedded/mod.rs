//! The embedded backend: lxgate drives LXC and QEMU on this host
//! itself. State on disk under `DATA_DIR` (`lxc/`, `images/`), the inventory
//! in the database, operations and events in process.

pub(crate) mod bridge;
mod cluster;
mod copies;
mod detect;
mod dhcp;
mod downloads;
mod driver;
pub(crate) mod driver_types;
mod events;
mod exec;
mod expiry;
mod files;
mod host;
pub(crate) mod idmap;
pub(crate) mod image_budget;
mod image_pack;
pub(crate) mod image_size;
pub(crate) mod images;
mod instance_config;
mod instances;
mod inventory;
pub(crate) mod limits;
pub(crate) mod lxc;
mod lxc_monitor;
pub(crate) mod networks;
mod operations;
mod process;
mod profiles;
mod projects;
pub(crate) mod qcow;
mod qemu;
mod recovery;
pub(crate) mod simplestreams;
mod snapshots;
pub(crate) mod storage;
mod system;
mod tarball;
mod volume_snapshots;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::AnyPool;
use tokio::sync::OnceCell;

use super::events::EventBus;
use super::types;
use super::{BackendError, DriverInfo};
use crate::config::VmAccel;
use crate::db::embedded as inv;
use crate::fetch::Fetcher;
use images::ImageStore;
use operations::{Operations, resource_url};

/// Serializes the operations on one instance (held across their work).
type InstanceLock = Arc<tokio::sync::Mutex<()>>;

pub struct EmbeddedBackend {
    data_dir: PathBuf,
    accel: VmAccel,
    drivers: OnceCell<Vec<DriverInfo>>,
    pool: AnyPool,
    bus: EventBus,
    ops: Operations,
    images: Arc<ImageStore>,
    lxc: Arc<lxc::Lxc>,
    qemu: Arc<qemu::Qemu>,
    /// For image servers (simplestreams): every fetch under `fetch`'s rules.
    fetch: Fetcher,
    /// `MAX_IMAGE_BYTES`: downloads, unpacked sizes, VM disks' virtual sizes.
    max_image_bytes: u64,
    /// Recorded exec output kept per command (the total is `ops`'s).
    output: types::OutputLimits,
    /// One lock per instance: operations on it run one after the other.
    locks: Mutex<HashMap<(String, String), InstanceLock>>,
    /// Managed networks and the NIC addresses given out on them change
    /// under this lock (taken after an instance's own, never before).
    net_lock: tokio::sync::Mutex<()>,
    /// Isolated id ranges are picked and recorded (the instance row) under
    /// this lock, so two creates never take the same one.
    idmap_lock: tokio::sync::Mutex<()>,
    /// `system/info`'s answer about unprivileged containers, with when it
    /// was read: it forks `lxc-usernsexec`, too much for every request.
    unprivileged_seen: tokio::sync::Mutex<Option<(std::time::Instant, UnprivilegedRange)>>,
    /// Wakes the expiry task when something that expires is recorded.
    expiry_wake: Arc<tokio::sync::Notify>,
    /// `DATA_DIR/.lxgate.lock`, held locked while this backend lives.
    _data_lock: Option<std::fs::File>,
}

type UnprivilegedRange = Result<idmap::HostRange, String>;

/// How long `system/info` reuses what it found about unprivileged
/// containers; an admin who fixes the host sees it this much later.
const UNPRIVILEGED_TTL: Duration = Duration::from_secs(10);

impl EmbeddedBackend {
    pub fn new(
        data_dir: PathBuf,
        accel: VmAccel,
        pool: AnyPool,
        fetch: Fetcher,
        max_image_bytes: u64,
    ) -> Self {
        let bus = EventBus::default();
        Self {
            images: Arc::new(ImageStore::new(data_dir.join("images"))),
            lxc: Arc::new(lxc::Lxc::new(data_dir.join("lxc"))),
            qemu: Arc::new(qemu::Qemu::new(data_dir.join("vms"), accel)),
            fetch,
            max_image_bytes,
            data_dir,
            accel,
            drivers: OnceCell::new(),
            pool,
            ops: Operations::new(bus.clone(), types::OutputLimits::default().total),
            output: types::OutputLimits::default(),
            bus,
            locks: Mutex::default(),
            net_lock: tokio::sync::Mutex::default(),
            idmap_lock: tokio::sync::Mutex::default(),
            unprivileged_seen: tokio::sync::Mutex::default(),
            expiry_wake: Arc::default(),
            _data_lock: None,
        }
    }

    /// Takes `DATA_DIR` for this process before anything touches it: an
    /// exclusive lock on `DATA_DIR/.lxgate.lock`, held while it runs.
    /// Another lxgate on the same `DATA_DIR` (a double start, a restart
    /// that starts the new one before the old one has stopped) is waited
    /// for up to `wait`, then refused: two would undo each other's work
    /// (`recovery` takes a running create for an interrupted one).
    pub async fn lock_data_dir(mut self, wait: std::time::Duration) -> Result<Self, String> {
        let path = self.data_dir.join(".lxgate.lock");
        let file = tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd;
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let until = std::time::Instant::now() + wait;
            loop {
                // SAFETY: flock(2) on a descriptor this function owns.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                    return Ok(file);
                }
                if std::time::Instant::now() >= until {
                    return Err(format!(
                        "another lxgate is running on DATA_DIR ({} is locked); one lxgate per DATA_DIR",
                        path.display()
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
        .await
        .map_err(|e| format!("locking DATA_DIR: {e}"))??;
        self._data_lock = Some(file);
        Ok(self)
    }

    /// Recorded exec output caps other than the defaults (call before any
    /// operation starts: the operation manager is replaced).
    pub fn with_output_limits(mut self, limits: types::OutputLimits) -> Self {
        self.ops = Operations::new(self.bus.clone(), limits.total);
        self.output = limits;
        self
    }

    /// At startup: containers' and VMs' directories and the pools' volumes
    /// closed to other host users (see `lxc::secure_dir`,
    /// `qemu::close_vm_dir`, `storage::close_custom_dir`).
    pub async fn secure_data_dir(&self) {
        self.lxc.secure_all().await;
        self.qemu.secure_all().await;
        self.secure_volumes().await;
    }

    /// `unprivileged_range`, reused for `UNPRIVILEGED_TTL`; callers at the
    /// same time wait for one probe rather than each forking their own.
    async fn unprivileged_range_cached(&self) -> UnprivilegedRange {
        let mut seen = self.unprivileged_seen.lock().await;
        if let Some((at, found)) = seen.as_ref()
            && at.elapsed() < UNPRIVILEGED_TTL
        {
            return found.clone();
        }
        let found = self.unprivileged_range().await;
        *seen = Some((std::time::Instant::now(), found.clone()));
        found
    }

    /// Driver facts do not change while lxgate runs, so they are probed once.
    async fn drivers(&self) -> &[DriverInfo] {
        self.drivers
            .get_or_init(|| async { vec![detect::lxc().await, detect::qemu(self.accel).await] })
            .await
    }

    async fn driver_available(&self, name: &str) -> Result<(), BackendError> {
        let drivers = self.drivers().await;
        match drivers.iter().find(|d| d.name == name) {
            Some(d) if d.available => Ok(()),
            Some(d) => Err(BackendError::NotSupported(format!(
                "the {name} driver is not available on this host: {}",
                d.detail.as_deref().unwrap_or("not installed")
            ))),
            None => Err(BackendError::NotSupported(format!("no {name} driver"))),
        }
    }

    /// Where an instance's files live on the host.
    fn instance_dir(&self, row: &inv::InstanceRow) -> PathBuf {
        let host = lxc::Lxc::host_name(&row.project, &row.name);
        if row.instance_type == driver_types::VM {
            self.qemu.vm_dir(&host)
        } else {
            self.lxc.dir(&host)
        }
    }

    /// Serializes the work on one custom volume's data (snapshots,
    /// restores, copies from it, its deletion). Kept with the instance
    /// locks under a key no instance has (names hold no `/`).
    fn volume_lock(&self, pool: &str, project: &str, volume: &str) -> InstanceLock {
        self.lock(project, &format!("volume/{pool}/{volume}"))
    }

    fn lock(&self, project: &str, name: &str) -> InstanceLock {
        self.locks
            .lock()
            .expect("instance locks")
            .entry((project.to_owned(), name.to_owned()))
            .or_default()
            .clone()
    }
}

fn resources(kind: &str, project: &str, path: &str) -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([(kind.to_owned(), vec![resource_url(project, path)])])
}
