//! User-namespace id maps for unprivileged containers.
//!
//! Every container that is not explicitly privileged runs in a user
//! namespace: its ids 0-65535 are host ids taken from the subordinate range
//! that `/etc/subuid` and `/etc/subgid` grant root (lxgate runs as root, so
//! root's range is lxgate's).
//!
//! By default one range, the first 65536 ids of root's, is shared by all
//! containers, like Incus's default: a custom volume attached to several
//! containers, a snapshot restored, or a copy made has the same owners in
//! every container without re-chowning a single file. What a range per
//! container adds (one container's root unable to touch another's files
//! should both escape their mount namespace) costs a shift of the whole
//! rootfs on every copy or move between maps and rules out sharing volumes;
//! the shared range already keeps every container's root away from the
//! host's own ids, the escape that matters most. So isolation is asked for
//! per container, as in Incus: `security.idmap.isolated=true` gives it the
//! next free block of 65536 ids after the shared one.
//!
//! The map a container was created with is stored with it (Incus's
//! `volatile.idmap.base` / `volatile.idmap.current` keys), so its files and
//! its configuration keep agreeing even if the host's range changes later.
//!
//! The host ids that are no container's are here too: whom lxgate's own
//! files belong to (`lxgate_ids`).

use serde::{Deserialize, Serialize};

use crate::backend::BackendError;
use crate::backend::types::ConfigMap;

/// Ids a container gets: 0-65535, what a distribution's users and groups
/// (nobody = 65534 included) need.
pub const SIZE: u32 = 65536;

const SUBUID: &str = "/etc/subuid";
const SUBGID: &str = "/etc/subgid";

/// A container's ids 0..size are host ids uid_base.. and gid_base..
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub uid_base: u32,
    pub gid_base: u32,
    pub size: u32,
}

/// One entry of Incus's `volatile.idmap.current` JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IncusEntry {
    isuid: bool,
    isgid: bool,
    hostid: u64,
    nsid: u64,
    maprange: u64,
}

impl IdMap {
    /// The host uid of a container uid, if the map holds it.
    pub fn host_uid(&self, uid: u32) -> Option<u32> {
        (uid < self.size).then(|| self.uid_base + uid)
    }

    pub fn host_gid(&self, gid: u32) -> Option<u32> {
        (gid < self.size).then(|| self.gid_base + gid)
    }

    /// The container's view of a host uid (65534, "nobody", for ids it does
    /// not map, as the kernel shows them).
    pub fn ns_uid(&self, host: u32) -> u32 {
        host.checked_sub(self.uid_base)
            .filter(|u| *u < self.size)
            .unwrap_or(65534)
    }

    pub fn ns_gid(&self, host: u32) -> u32 {
        host.checked_sub(self.gid_base)
            .filter(|g| *g < self.size)
            .unwrap_or(65534)
    }

    /// `lxc.idmap` values.
    pub fn lxc_lines(&self) -> [String; 2] {
        [
            format!("u 0 {} {}", self.uid_base, self.size),
            format!("g 0 {} {}", self.gid_base, self.size),
        ]
    }

    /// `lxc-usernsexec` options mapping the container's ids.
    pub fn usernsexec_args(&self) -> [String; 4] {
        [
            "-m".into(),
            format!("u:0:{}:{}", self.uid_base, self.size),
            "-m".into(),
            format!("g:0:{}:{}", self.gid_base, self.size),
        ]
    }

    /// Records the map in an instance's config, the way Incus does.
    pub fn store(&self, config: &mut ConfigMap) {
        let entries = [
            IncusEntry {
                isuid: true,
                isgid: false,
                hostid: self.uid_base.into(),
                nsid: 0,
                maprange: self.size.into(),
            },
            IncusEntry {
                isuid: false,
                isgid: true,
                hostid: self.gid_base.into(),
                nsid: 0,
                maprange: self.size.into(),
            },
        ];
        let json = serde_json::to_string(&entries).unwrap_or_else(|_| "[]".into());
        config.insert("volatile.idmap.base".into(), self.uid_base.to_string());
        config.insert("volatile.idmap.current".into(), json.clone());
        config.insert("volatile.idmap.next".into(), json);
    }

    /// The map stored by `store`, if the config holds a well-formed one.
    pub fn stored(config: &ConfigMap) -> Option<Self> {
        let entries: Vec<IncusEntry> =
            serde_json::from_str(config.get("volatile.idmap.current")?).ok()?;
        let find = |uid: bool| {
            entries
                .iter()
                .find(|e| e.nsid == 0 && if uid { e.isuid } else { e.isgid })
        };
        let (u, g) = (find(true)?, find(false)?);
        if u.maprange != g.maprange {
            return None;
        }
        Some(Self {
            uid_base: u32::try_from(u.hostid).ok()?,
            gid_base: u32::try_from(g.hostid).ok()?,
            size: u32::try_from(u.maprange).ok().filter(|s| *s > 0)?,
        })
    }
}

/// Root's first range of at least `want` ids in a subuid/subgid file
/// (`name-or-id:start:count` lines): its start and length.
pub fn parse_subid(text: &str, want: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if !matches!(who, "root" | "0") || f.next().is_some() {
            return None;
        }
        let (start, count): (u32, u32) = (start.parse().ok()?, count.parse().ok()?);
        // Root's own ids (below 65536 on any sane host) are never handed out;
        // a range running past the last id is cut where ids end.
        let count = count.min(u32::MAX - start);
        (count >= want && start >= SIZE).then_some((start, count))
    })
}

/// The ranges root holds on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRange {
    pub uid_start: u32,
    pub gid_start: u32,
    /// Whole blocks of `SIZE` ids in both ranges.
    pub blocks: u32,
}

impl HostRange {
    /// Block `k`'s map: 0 is the shared one, 1.. the isolated ones.
    pub fn block(&self, k: u32) -> Option<IdMap> {
        (k < self.blocks).then(|| IdMap {
            uid_base: self.uid_start + k * SIZE,
            gid_base: self.gid_start + k * SIZE,
            size: SIZE,
        })
    }

    /// Whether a host uid is one of root's subordinate ids lxgate maps.
    pub fn holds(&self, uid: u32) -> bool {
        uid >= self.uid_start
            && u64::from(uid - self.uid_start) < u64::from(self.blocks) * u64::from(SIZE)
    }

    pub fn shared(&self) -> IdMap {
        self.block(0).expect("a range holds at least one block")
    }

    /// The first isolated block no container holds (`taken`: the uid bases
    /// of every container's map), or None when all are given out.
    pub fn free_isolated(&self, taken: &[u32]) -> Option<IdMap> {
        (1..self.blocks)
            .filter_map(|k| self.block(k))
            .find(|m| !taken.contains(&m.uid_base))
    }
}

/// Root's ranges from /etc/subuid and /etc/subgid, or why there are none
/// (said as is to clients and in `system/info`).
pub async fn host_range() -> Result<HostRange, String> {
    let read = |path: &'static str| async move {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("{path}: {e} (root needs a subordinate id range there)"))?;
        parse_subid(&text, SIZE).ok_or_else(|| {
            format!(
                "{path} grants root no range of {SIZE} subordinate ids \
                 (add a line like root:1000000:1000000000; scripts/host-setup.sh does)"
            )
        })
    };
    let ((uid_start, uids), (gid_start, gids)) = (read(SUBUID).await?, read(SUBGID).await?);
    Ok(HostRange {
        uid_start,
        gid_start,
        blocks: uids.min(gids) / SIZE,
    })
}

/// Whom lxgate's own files belong to: root, where the embedded backend
/// runs containers (a non-root lxgate in development keeps its own).
pub(super) fn lxgate_ids() -> (u32, u32) {
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// How containers are confined on this host, for the LXC driver's detail
/// in `system/info`.
pub fn describe(range: &Result<HostRange, String>, apparmor: bool) -> String {
    match range {
        Ok(r) => {
            let m = r.shared();
            format!(
                "unprivileged containers: ids 0-{last} are host uids {u}-{ul} and gids {g}-{gl}, \
             one range shared by all containers ({iso} more for security.idmap.isolated=true); \
             LXC's default seccomp profile; AppArmor {aa}; \
             privileged only with security.privileged=true",
                last = m.size - 1,
                iso = r.blocks - 1,
                u = m.uid_base,
                ul = m.uid_base + (m.size - 1),
                g = m.gid_base,
                gl = m.gid_base + (m.size - 1),
                aa = if apparmor {
                    "enforced"
                } else {
                    "absent from this kernel"
                },
            )
        }
        Err(why) => format!(
            "unprivileged containers unavailable: {why}; only privileged ones \
             (security.privileged=true) can be created"
        ),
    }
}

/// The 501 a container create gets on a host that cannot map its ids.
pub fn unavailable(why: &str) -> BackendError {
    BackendError::NotSupported(format!(
        "unprivileged containers cannot run on this host: {why}; \
         an admin may create the container with security.privileged=true"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_ranges_are_found() {
        assert_eq!(
            parse_subid("alice:100000:65536\nroot:1000000:1000000000\n", SIZE),
            Some((1_000_000, 1_000_000_000))
        );
        assert_eq!(parse_subid("0:200000:65536\n", SIZE), Some((200_000, SIZE)));
        // Too small, someone else's, root's own ids, malformed.
        assert_eq!(parse_subid("root:100000:1000\n", SIZE), None);
        assert_eq!(parse_subid("alice:100000:65536\n", SIZE), None);
        assert_eq!(parse_subid("root:0:65536\n", SIZE), None);
        assert_eq!(parse_subid("root:x:65536\nroot:1:2:3\n", SIZE), None);
        assert_eq!(parse_subid("", SIZE), None);
        assert_eq!(
            parse_subid("root:4294967000:65536\nroot:300000:65536\n", SIZE),
            Some((300_000, SIZE))
        );
    }

    #[test]
    fn isolated_blocks_follow_the_shared_one() {
        let r = HostRange {
            uid_start: 1_000_000,
            gid_start: 2_000_000,
            blocks: 3,
        };
        assert_eq!(r.shared().uid_base, 1_000_000);
        let first = r.free_isolated(&[1_000_000]).unwrap();
        assert_eq!((first.uid_base, first.gid_base), (1_065_536, 2_065_536));
        // A freed block is given out again; none left is None.
        assert_eq!(r.free_isolated(&[1_131_072]).unwrap().uid_base, 1_065_536);
        assert_eq!(r.free_isolated(&[1_065_536, 1_131_072]), None);
        assert_eq!(r.block(3), None);
    }

    #[test]
    fn maps_translate_and_round_trip() {
        let m = IdMap {
            uid_base: 1_000_000,
            gid_base: 2_000_000,
            size: SIZE,
        };
        assert_eq!(m.host_uid(0), Some(1_000_000));
        assert_eq!(m.host_gid(33), Some(2_000_033));
        assert_eq!(m.host_uid(SIZE), None);
        assert_eq!(m.ns_uid(1_000_005), 5);
        assert_eq!(m.ns_uid(0), 65534);
        assert_eq!(m.ns_gid(2_000_000 + SIZE), 65534);
        assert_eq!(m.lxc_lines()[0], "u 0 1000000 65536");
        assert_eq!(m.lxc_lines()[1], "g 0 2000000 65536");
        assert_eq!(m.usernsexec_args()[3], "g:0:2000000:65536");
        let mut c = ConfigMap::new();
        m.store(&mut c);
        assert_eq!(c["volatile.idmap.base"], "1000000");
        assert!(
            c["volatile.idmap.current"].contains(r#""Isuid":true"#),
            "{c:?}"
        );
        assert_eq!(IdMap::stored(&c), Some(m));
        assert_eq!(IdMap::stored(&ConfigMap::new()), None);
    }
}
