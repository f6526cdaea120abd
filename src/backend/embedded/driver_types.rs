//! What the two drivers (lxc.rs, qemu.rs) build on, below the one face
//! driver.rs puts on them, and what the rest of the backend knows of an
//! instance without asking which driver runs it: its type, the directory
//! each driver keeps per instance, the devices it is given on this host and
//! the run state a driver reports.

use std::path::PathBuf;

use super::networks::Nic;

/// The `type` of an instance QEMU runs; any other is a container, LXC's.
pub const VM: &str = "virtual-machine";

/// The names of the directories in `dir` (none when it is missing): each
/// driver keeps one per instance there.
pub async fn instance_dirs(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return out;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        if e.file_type().await.is_ok_and(|t| t.is_dir()) {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// What an instance's devices are on this host: custom volumes (host path,
/// and the path in a container) and NICs.
#[derive(Debug, Clone, Default)]
pub struct Attachments {
    pub mounts: Vec<(PathBuf, String)>,
    pub nics: Vec<Nic>,
}

/// An instance's run state, in `lxc-info`'s terms: a container's is what
/// `lxc-info` says (`lxc::parse_info`), a VM's is put in the same terms by
/// the QEMU driver.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LxcInfo {
    /// `RUNNING`, `STOPPED`, `FROZEN`, `STARTING`...
    pub state: String,
    pub pid: Option<i64>,
    /// CPU time used, nanoseconds.
    pub cpu_ns: i64,
    /// Memory in use, bytes.
    pub memory: i64,
}

impl LxcInfo {
    pub fn stopped() -> Self {
        Self {
            state: "STOPPED".into(),
            ..Default::default()
        }
    }
}
