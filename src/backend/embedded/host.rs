//! The host's resources as the embedded backend reads them: `/proc/cpuinfo`,
//! `/proc/meminfo`, `/sys/block` and `statvfs(3)` of each pool's directory.
//! Everything here blocks (file reads, a syscall per pool): `read` runs on
//! a blocking thread, never on the async executor.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::backend::types::{
    ResourcesCpu, ResourcesCpuSocket, ResourcesMemory, ResourcesStorage, ResourcesStorageDisk,
    ResourcesStoragePool, ResourcesUsage, SystemResources,
};

/// The most of one file under /proc or /sys read: a /proc/cpuinfo of a few
/// hundred CPUs is well under it, and nothing there can make lxgate hold more.
const MAX_FILE: u64 = 8 << 20;

/// Most disks listed (a host with thousands of block devices is answered
/// with the first ones, by name).
const MAX_DISKS: usize = 256;

/// A pool to measure: its name, driver and directory.
pub struct PoolDir {
    pub name: String,
    pub driver: String,
    pub dir: PathBuf,
}

fn read_capped(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// One line of a `/sys` attribute, trimmed (empty when unreadable).
fn attr(path: &Path) -> String {
    read_capped(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The host's name as the one member of the embedded backend's "cluster"
/// (what `cluster/members` lists, `?target=` must name, and instances and
/// operations show as their `location`): the first label of the kernel's
/// host name, as Incus names a member after its host; `localhost` when that
/// is no valid member name. Read once (a host renamed while lxgate runs
/// keeps its old name until a restart, as its instances' records do).
pub fn member_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let full = attr(Path::new("/proc/sys/kernel/hostname"));
        member_name_of(&full)
    })
}

fn member_name_of(host: &str) -> String {
    let label = host.split('.').next().unwrap_or_default();
    crate::names::MemberName::parse(label).map_or_else(|_| "localhost".to_owned(), String::from)
}

/// Everything `system/resources` shows. Pools whose directory cannot be
/// measured are left out (and logged); /proc being unreadable is an error.
pub fn read(pools: &[PoolDir]) -> std::io::Result<SystemResources> {
    let cpu = parse_cpuinfo(&read_capped(Path::new("/proc/cpuinfo"))?);
    let memory = parse_meminfo(&read_capped(Path::new("/proc/meminfo"))?);
    let storage = disks(Path::new("/sys/block"));
    let storage_pools = pools
        .iter()
        .filter_map(|p| match space(&p.dir) {
            Ok((space, inodes)) => Some(ResourcesStoragePool {
                name: p.name.clone(),
                driver: p.driver.clone(),
                space,
                inodes,
            }),
            Err(e) => {
                tracing::warn!(pool = %p.name, error = %e, "cannot measure a storage pool");
                None
            }
        })
        .collect();
    Ok(SystemResources {
        cpu,
        memory,
        storage,
        storage_pools,
    })
}

/// CPUs from `/proc/cpuinfo`: one `processor` block per logical CPU; the
/// sockets by `physical id` (absent on some virtual and ARM hosts: one
/// socket then).
pub fn parse_cpuinfo(text: &str) -> ResourcesCpu {
    let mut total = 0;
    let mut sockets: BTreeMap<u64, ResourcesCpuSocket> = BTreeMap::new();
    for block in text.split("\n\n").filter(|b| b.contains("processor")) {
        total += 1;
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
        };
        let socket = field("physical id")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        sockets.entry(socket).or_insert_with(|| ResourcesCpuSocket {
            // x86 says `model name`; ARM kernels have no model line of the
            // kind, only `CPU part` numbers.
            name: field("model name")
                .or_else(|| field("Processor"))
                .unwrap_or_default(),
            vendor: field("vendor_id")
                .or_else(|| field("CPU implementer"))
                .unwrap_or_default(),
            socket,
        });
    }
    ResourcesCpu {
        architecture: std::env::consts::ARCH.to_owned(),
        total,
        sockets: sockets.into_values().collect(),
    }
}

/// Memory from `/proc/meminfo` (kB): used is what is not available to new
/// work (`MemTotal - MemAvailable`).
pub fn parse_meminfo(text: &str) -> ResourcesMemory {
    let kib = |name: &str| {
        text.lines()
            .find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .unwrap_or(0)
            .saturating_mul(1024)
    };
    let total = kib("MemTotal");
    ResourcesMemory {
        total,
        used: total.saturating_sub(kib("MemAvailable")),
    }
}

/// Disks from `/sys/block`: devices with a `device` link (hardware, or a
/// VM's virtual disk); loop, zram and device-mapper nodes have none.
fn disks(sys_block: &Path) -> ResourcesStorage {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let disks: Vec<ResourcesStorageDisk> = names
        .into_iter()
        .filter(|n| sys_block.join(n).join("device").exists())
        .take(MAX_DISKS)
        .map(|id| {
            let dir = sys_block.join(&id);
            let sectors: u64 = attr(&dir.join("size")).parse().unwrap_or(0);
            let disk_type = std::fs::read_link(dir.join("device/subsystem"))
                .ok()
                .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            ResourcesStorageDisk {
                model: attr(&dir.join("device/model")),
                disk_type,
                // `size` counts 512-byte sectors whatever the device's own.
                size: sectors.saturating_mul(512),
                read_only: attr(&dir.join("ro")) == "1",
                removable: attr(&dir.join("removable")) == "1",
                id,
            }
        })
        .collect();
    ResourcesStorage {
        total: disks.len() as u64,
        disks,
    }
}

/// Space and inodes of the file system holding `dir`: of its nearest
/// existing ancestor when the pool's directory is not made yet (the
/// `default` pool's is made with its first volume).
fn space(dir: &Path) -> std::io::Result<(ResourcesUsage, ResourcesUsage)> {
    let at = dir
        .ancestors()
        .find(|p| p.exists())
        .ok_or_else(|| std::io::Error::other("no existing directory"))?;
    let path =
        std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string and `st` a buffer of the
    // right type, which statvfs fills when it returns 0.
    if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it wrote the whole struct.
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize;
    let total = st.f_blocks.saturating_mul(frsize);
    let free = st.f_bfree.saturating_mul(frsize);
    Ok((
        ResourcesUsage {
            total,
            used: total.saturating_sub(free),
        },
        ResourcesUsage {
            total: st.f_files,
            used: st.f_files.saturating_sub(st.f_ffree),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_are_counted_and_sockets_named() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon A\nphysical id\t: 0\n\n\
                    processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon A\nphysical id\t: 0\n\n\
                    processor\t: 2\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon B\nphysical id\t: 1\n\n";
        let cpu = parse_cpuinfo(text);
        assert_eq!(cpu.total, 3);
        assert_eq!(cpu.sockets.len(), 2);
        assert_eq!(
            (cpu.sockets[1].name.as_str(), cpu.sockets[1].socket),
            ("Xeon B", 1)
        );
        assert_eq!(cpu.sockets[0].vendor, "GenuineIntel");
        // No `physical id`: one socket.
        let cpu = parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 50\n\nprocessor\t: 1\n\n");
        assert_eq!((cpu.total, cpu.sockets.len()), (2, 1));
    }

    #[test]
    fn memory_in_use_is_what_is_not_available() {
        let m =
            parse_meminfo("MemTotal:       2048 kB\nMemFree:  100 kB\nMemAvailable:   512 kB\n");
        assert_eq!((m.total, m.used), (2048 * 1024, 1536 * 1024));
        assert_eq!(parse_meminfo("garbage").total, 0);
    }

    #[test]
    fn the_member_is_named_after_the_host() {
        assert_eq!(member_name_of("node-1.example.org"), "node-1");
        assert_eq!(member_name_of("vm"), "vm");
        assert_eq!(member_name_of(""), "localhost");
        assert_eq!(member_name_of("under_score"), "localhost");
        assert!(crate::names::MemberName::parse(member_name()).is_ok());
    }

    #[test]
    fn this_host_can_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let r = read(&[PoolDir {
            name: "p".into(),
            driver: "dir".into(),
            dir: dir.path().join("not/made/yet"),
        }])
        .unwrap();
        assert!(r.cpu.total >= 1);
        assert!(r.memory.total > 0 && r.memory.used <= r.memory.total);
        assert_eq!(r.storage_pools.len(), 1);
        let p = &r.storage_pools[0];
        assert!(p.space.total > 0 && p.space.used <= p.space.total);
    }
}
