//! The instance policy (DESIGN §4a): *what* a caller may put into an
//! instance's config and devices, and into a storage volume's config. RBAC
//! decides *who* may change an instance; this module decides what the change
//! may contain, the same way for both backends.
//!
//! Only global admins are unrestricted. Everybody else (operators, and the
//! admins of a single project) may write the keys and devices of the §4a
//! table, plus whatever an admin listed for that project in the two project
//! config keys [`ALLOW_CONFIG_KEY`] and [`ALLOW_DEVICES_KEY`]. `volatile.*`
//! is written by backends only, never through lxgate, admins included.
//!
//! The check is about *changes*: a key an admin set may stay in a PUT that an
//! operator sends back unchanged, but the operator may not set, change or
//! remove it (removing an admin's `security.syscalls.deny` widens the
//! instance just as much as adding `security.privileged`). Removing a device
//! takes access away, so it passes here; that it does not uncover a
//! profile's device of that name is checked where profiles can be read
//! (`crate::api::policy`), as are profiles and networks.
//!
//! This module is pure (no I/O): callers read the project and the current
//! instance and pass them in. It is a leaf: it knows nothing of HTTP,
//! backends or users beyond "admin or not".

use std::collections::{BTreeMap, BTreeSet};

pub type Config = BTreeMap<String, String>;
pub type Devices = BTreeMap<String, Config>;

/// Project config key: comma-separated config keys (or `prefix.*`) that
/// non-admins may also set in this project, e.g. `security.nesting`.
pub const ALLOW_CONFIG_KEY: &str = "user.lxgate.allow.config";
/// Project config key: comma-separated device types that non-admins may add
/// with any option in this project, e.g. `unix-char,gpu`. `disk` and `nic`
/// here lift the restrictions on those types (host paths, `nictype`...).
pub const ALLOW_DEVICES_KEY: &str = "user.lxgate.allow.devices";

/// Instance config keys non-admins may set (DESIGN §4a).
const INSTANCE_KEYS: &[&str] = &[
    "limits.cpu",
    "limits.cpu.allowance",
    "limits.cpu.priority",
    "limits.memory",
    "limits.memory.enforce",
    "limits.memory.swap",
    "limits.processes",
    "limits.disk.priority",
    "limits.network.priority",
    "boot.autostart",
    "boot.autostart.delay",
    "boot.autostart.priority",
    "boot.stop.priority",
    "boot.host_shutdown_timeout",
    "cloud-init.user-data",
    "cloud-init.vendor-data",
    "cloud-init.network-config",
    "snapshots.schedule",
    "snapshots.schedule.stopped",
    "snapshots.pattern",
    "snapshots.expiry",
    "security.protection.delete",
    "security.idmap.isolated",
    "security.secureboot",
    "security.csm",
    "agent.nic_config",
];
/// Instance config key prefixes non-admins may set.
const INSTANCE_PREFIXES: &[&str] = &["user.", "environment.", "image."];

/// Storage volume config non-admins may set.
const VOLUME_KEYS: &[&str] = &["size"];
const VOLUME_PREFIXES: &[&str] = &["snapshots.", "user."];

/// Options of the root disk (`path: /`).
const ROOT_DISK_OPTIONS: &[&str] = &[
    "type",
    "path",
    "pool",
    "size",
    "size.state",
    "boot.priority",
];
/// Options of a custom volume disk.
const VOLUME_DISK_OPTIONS: &[&str] = &[
    "type",
    "pool",
    "source",
    "path",
    "readonly",
    "boot.priority",
];
/// Options of a NIC on a managed network.
const NIC_OPTIONS: &[&str] = &[
    "type",
    "network",
    "name",
    "hwaddr",
    "mtu",
    "ipv4.address",
    "ipv6.address",
    "security.mac_filtering",
    "security.ipv4_filtering",
    "security.ipv6_filtering",
    "boot.priority",
];

/// Device types an admin may allow per project ([`ALLOW_DEVICES_KEY`]).
pub const DEVICE_TYPES: &[&str] = &[
    "disk",
    "nic",
    "none",
    "proxy",
    "unix-char",
    "unix-block",
    "unix-hotplug",
    "usb",
    "gpu",
    "pci",
    "infiniband",
    "tpm",
];

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Valid, but not for this caller: 403.
    Forbidden { field: String, detail: String },
    /// Not valid for anybody (`volatile.*`, a malformed device): 400.
    Invalid { field: String, detail: String },
}

impl Denied {
    fn forbidden(field: impl Into<String>, what: impl AsRef<str>) -> Self {
        Denied::Forbidden {
            field: field.into(),
            detail: format!(
                "{} is not allowed for non-admins; an admin can allow it for this project \
                 (project config `{ALLOW_CONFIG_KEY}` / `{ALLOW_DEVICES_KEY}`)",
                what.as_ref()
            ),
        }
    }

    fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Denied::Invalid {
            field: field.into(),
            detail: detail.into(),
        }
    }

    pub fn field(&self) -> &str {
        match self {
            Denied::Forbidden { field, .. } | Denied::Invalid { field, .. } => field,
        }
    }
}

/// A config key, or every key under a prefix (`linux.sysctl.*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum KeyPattern {
    Exact(String),
    Prefix(String),
}

impl KeyPattern {
    fn matches(&self, key: &str) -> bool {
        match self {
            KeyPattern::Exact(k) => k == key,
            KeyPattern::Prefix(p) => key.starts_with(p.as_str()),
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.split('.').all(|part| {
                    !part.is_empty()
                        && part.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || "-_".contains(c)
                        })
                })
        };
        let pattern = match s.strip_suffix(".*") {
            Some(prefix) if ok(prefix) => KeyPattern::Prefix(format!("{prefix}.")),
            None if ok(s) => KeyPattern::Exact(s.to_owned()),
            _ => {
                return Err(format!(
                    "{s:?} is not a config key or a `prefix.*` pattern (lowercase letters, digits, `-`, `_`, dots)"
                ));
            }
        };
        if s == "volatile" || s.starts_with("volatile.") {
            return Err(
                "volatile.* keys are written by the backend only and cannot be allowed".into(),
            );
        }
        Ok(pattern)
    }
}

impl std::fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyPattern::Exact(k) => f.write_str(k),
            KeyPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// What an admin allowed non-admins in one project, read from the
/// project's config. Empty (the default) means the §4a table only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Widening {
    config: BTreeSet<KeyPattern>,
    devices: BTreeSet<String>,
}

fn entries(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

impl Widening {
    /// Reads the two allow keys of a project's config. Errors name the key
    /// and the bad entry (for a 400 on project create/update).
    pub fn from_project_config(config: &Config) -> Result<Self, Denied> {
        let mut w = Widening::default();
        if let Some(v) = config.get(ALLOW_CONFIG_KEY) {
            for e in entries(v) {
                let p = KeyPattern::parse(e)
                    .map_err(|m| Denied::invalid(format!("config.{ALLOW_CONFIG_KEY}"), m))?;
                w.config.insert(p);
            }
        }
        if let Some(v) = config.get(ALLOW_DEVICES_KEY) {
            for e in entries(v) {
                if !DEVICE_TYPES.contains(&e) {
                    return Err(Denied::invalid(
                        format!("config.{ALLOW_DEVICES_KEY}"),
                        format!(
                            "unknown device type {e:?}; known types: {}",
                            DEVICE_TYPES.join(", ")
                        ),
                    ));
                }
                w.devices.insert(e.to_owned());
            }
        }
        Ok(w)
    }

    pub fn is_empty(&self) -> bool {
        self.config.is_empty() && self.devices.is_empty()
    }

    /// The allowed config patterns, as written in the project config.
    pub fn config_patterns(&self) -> Vec<String> {
        self.config.iter().map(ToString::to_string).collect()
    }

    pub fn device_types(&self) -> Vec<String> {
        self.devices.iter().cloned().collect()
    }

    pub fn allows_device(&self, kind: &str) -> bool {
        self.devices.contains(kind)
    }

    /// Whether `key` is on the project's allow list.
    pub fn allows_key(&self, key: &str) -> bool {
        self.config.iter().any(|p| p.matches(key))
    }

    /// Whether any allowed key lies under `prefix` (or a pattern covers it).
    pub fn touches(&self, prefix: &str) -> bool {
        self.config.iter().any(|p| match p {
            KeyPattern::Exact(k) => k.starts_with(prefix),
            KeyPattern::Prefix(pre) => pre.starts_with(prefix) || prefix.starts_with(pre.as_str()),
        })
    }
}

/// The rules for one caller in one project.
#[derive(Debug, Clone)]
pub struct Policy {
    admin: bool,
    widening: Widening,
}

/// `""` in a config map means "unset", as in Incus.
fn value(map: &Config, key: &str) -> Option<String> {
    map.get(key).filter(|v| !v.is_empty()).cloned()
}

impl Policy {
    /// Global admins: anything but `volatile.*`.
    pub fn admin() -> Self {
        Policy {
            admin: true,
            widening: Widening::default(),
        }
    }

    /// Everybody else, in a project with this widening.
    pub fn restricted(widening: Widening) -> Self {
        Policy {
            admin: false,
            widening,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// Whether devices of type `kind` may carry any option for this caller.
    pub fn allows_device_type(&self, kind: &str) -> bool {
        self.admin || self.widening.allows_device(kind)
    }

    fn instance_key_allowed(&self, key: &str) -> bool {
        INSTANCE_KEYS.contains(&key)
            || INSTANCE_PREFIXES.iter().any(|p| key.starts_with(p))
            || self.widening.allows_key(key)
    }

    fn volume_key_allowed(&self, key: &str) -> bool {
        VOLUME_KEYS.contains(&key)
            || VOLUME_PREFIXES.iter().any(|p| key.starts_with(p))
            || self.widening.allows_key(key)
    }

    fn check_config_change(
        &self,
        before: &Config,
        after: &Config,
        keys: impl Iterator<Item = String>,
        allowed: impl Fn(&str) -> bool,
    ) -> Result<(), Denied> {
        for key in keys {
            let (old, new) = (value(before, &key), value(after, &key));
            if old == new {
                continue;
            }
            let field = format!("config.{key}");
            if key.starts_with("volatile.") {
                // Left out of a PUT: the backend keeps its own keys.
                if new.is_none() {
                    continue;
                }
                return Err(Denied::invalid(
                    field,
                    format!("`{key}`: volatile.* keys are written by the backend only"),
                ));
            }
            if !self.admin && !allowed(&key) {
                let verb = if new.is_none() { "removing" } else { "setting" };
                return Err(Denied::forbidden(
                    field,
                    format!("{verb} config key `{key}`"),
                ));
            }
        }
        Ok(())
    }

    /// Checks a change of an instance from `before` (empty for a create) to
    /// `after` (the whole config and devices once the change is applied).
    pub fn check_instance(
        &self,
        before: (&Config, &Devices),
        after: (&Config, &Devices),
    ) -> Result<(), Denied> {
        let keys: BTreeSet<String> = before.0.keys().chain(after.0.keys()).cloned().collect();
        self.check_config_change(before.0, after.0, keys.into_iter(), |k| {
            self.instance_key_allowed(k)
        })?;
        for (name, device) in after.1 {
            if before.1.get(name) != Some(device) {
                self.check_device(name, device)?;
            }
        }
        Ok(())
    }

    /// Checks a PATCH: `config` and `devices` are merged into `before`
    /// (a device given replaces the one of that name).
    pub fn check_instance_patch(
        &self,
        before: (&Config, &Devices),
        config: Option<&Config>,
        devices: Option<&Devices>,
    ) -> Result<(), Denied> {
        let mut after_config = before.0.clone();
        if let Some(c) = config {
            after_config.extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut after_devices = before.1.clone();
        if let Some(d) = devices {
            after_devices.extend(d.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        self.check_instance(before, (&after_config, &after_devices))
    }

    /// Checks one device that is added or changed.
    pub fn check_device(&self, name: &str, device: &Config) -> Result<(), Denied> {
        let field = |opt: &str| format!("devices.{name}.{opt}");
        let Some(kind) = device.get("type").map(String::as_str) else {
            return Err(Denied::invalid(
                field("type"),
                format!("device `{name}` has no `type`"),
            ));
        };
        if self.admin || self.widening.devices.contains(kind) {
            return Ok(());
        }
        let only = |allowed: &[&str], extra_prefix: Option<&str>, what: &str| {
            for opt in device.keys() {
                let ok = allowed.contains(&opt.as_str())
                    || extra_prefix.is_some_and(|p| opt.starts_with(p));
                if !ok {
                    return Err(Denied::forbidden(
                        field(opt),
                        format!("option `{opt}` on {what} `{name}`"),
                    ));
                }
            }
            Ok(())
        };
        match kind {
            "none" => only(&["type"], None, "`none` device"),
            "disk" if device.get("path").map(String::as_str) == Some("/") => {
                only(ROOT_DISK_OPTIONS, Some("limits."), "root disk")
            }
            "disk" => {
                only(VOLUME_DISK_OPTIONS, None, "disk device")?;
                if value(device, "pool").is_none() {
                    return Err(Denied::forbidden(
                        field("pool"),
                        format!(
                            "a disk device without `pool` (`{name}`: host paths and other sources)"
                        ),
                    ));
                }
                match value(device, "source") {
                    Some(src) if crate::names::check_resource_name("volume", &src).is_ok() => {
                        Ok(())
                    }
                    Some(src) => Err(Denied::forbidden(
                        field("source"),
                        format!(
                            "disk source {src:?} on `{name}` (only a custom volume's name of this project)"
                        ),
                    )),
                    None => Err(Denied::forbidden(
                        field("source"),
                        format!("a disk device without `source` (`{name}`, not the root disk)"),
                    )),
                }
            }
            "nic" => {
                only(NIC_OPTIONS, Some("limits."), "NIC")?;
                match value(device, "network") {
                    Some(net) if crate::names::check_resource_name("network", &net).is_ok() => {
                        Ok(())
                    }
                    Some(net) => Err(Denied::invalid(
                        field("network"),
                        format!("network name {net:?} on `{name}` is invalid"),
                    )),
                    None => Err(Denied::forbidden(
                        field("network"),
                        format!("a NIC without `network` (`{name}`: host interfaces)"),
                    )),
                }
            }
            other => Err(Denied::forbidden(
                field("type"),
                format!("device type `{other}` (`{name}`)"),
            )),
        }
    }

    /// Checks a storage volume's config change (create: `before` empty).
    pub fn check_volume(&self, before: &Config, after: &Config) -> Result<(), Denied> {
        let keys: BTreeSet<String> = before.keys().chain(after.keys()).cloned().collect();
        self.check_config_change(before, after, keys.into_iter(), |k| {
            self.volume_key_allowed(k)
        })
    }

    /// Checks a PATCH of a volume's config (keys merged into `before`).
    pub fn check_volume_patch(&self, before: &Config, patch: &Config) -> Result<(), Denied> {
        let mut after = before.clone();
        after.extend(patch.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.check_volume(before, &after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn devs(list: &[(&str, &[(&str, &str)])]) -> Devices {
        list.iter()
            .map(|(n, d)| ((*n).to_owned(), cfg(d)))
            .collect()
    }

    fn op() -> Policy {
        Policy::restricted(Widening::default())
    }

    fn create(p: &Policy, c: &Config, d: &Devices) -> Result<(), Denied> {
        p.check_instance((&Config::new(), &Devices::new()), (c, d))
    }

    fn forbidden_field(r: Result<(), Denied>) -> String {
        match r {
            Err(Denied::Forbidden { field, .. }) => field,
            other => panic!("expected 403, got {other:?}"),
        }
    }

    #[test]
    fn operators_get_the_table_and_nothing_else() {
        let ok = cfg(&[
            ("limits.cpu", "2"),
            ("limits.memory", "1GiB"),
            ("user.team", "a"),
            ("environment.FOO", "bar"),
            ("cloud-init.user-data", "#cloud-config"),
            ("security.protection.delete", "true"),
        ]);
        assert!(create(&op(), &ok, &Devices::new()).is_ok());
        for key in [
            "security.privileged",
            "security.nesting",
            "raw.lxc",
            "raw.qemu",
            "linux.kernel_modules",
            "security.syscalls.intercept.mknod",
            "security.idmap.base",
            "linux.sysctl.net.ipv4.ip_forward",
            "limits.kernel.nofile",
            "nvidia.runtime",
            "Security.Privileged",
        ] {
            let f = forbidden_field(create(&op(), &cfg(&[(key, "true")]), &Devices::new()));
            assert_eq!(f, format!("config.{key}"));
        }
        assert!(create(&Policy::admin(), &cfg(&[("raw.lxc", "x")]), &Devices::new()).is_ok());
    }

    #[test]
    fn volatile_is_never_writable_but_may_come_back_unchanged() {
        let before = cfg(&[("volatile.base_image", "abc"), ("limits.cpu", "1")]);
        let d = Devices::new();
        for p in [op(), Policy::admin()] {
            let after = cfg(&[("volatile.base_image", "evil")]);
            assert!(matches!(
                p.check_instance((&before, &d), (&after, &d)),
                Err(Denied::Invalid { .. })
            ));
            let same = cfg(&[("volatile.base_image", "abc"), ("limits.cpu", "2")]);
            assert!(p.check_instance((&before, &d), (&same, &d)).is_ok());
            // Left out of a PUT: not a write.
            assert!(
                p.check_instance((&before, &d), (&Config::new(), &d))
                    .is_ok()
            );
            assert!(create(&p, &cfg(&[("volatile.idmap.base", "0")]), &d).is_err());
        }
        assert!(KeyPattern::parse("volatile.*").is_err());
        assert!(KeyPattern::parse("volatile.idmap.base").is_err());
    }

    #[test]
    fn admin_keys_may_stay_but_not_change_or_go() {
        let d = Devices::new();
        let before = cfg(&[
            ("security.privileged", "true"),
            ("security.syscalls.deny", "mount"),
        ]);
        let mut after = before.clone();
        after.insert("limits.cpu".into(), "2".into());
        assert!(op().check_instance((&before, &d), (&after, &d)).is_ok());
        let mut removed = after.clone();
        removed.remove("security.syscalls.deny");
        assert_eq!(
            forbidden_field(op().check_instance((&before, &d), (&removed, &d))),
            "config.security.syscalls.deny"
        );
        // PATCH with "" removes.
        let patch = cfg(&[("security.syscalls.deny", "")]);
        assert!(
            op().check_instance_patch((&before, &d), Some(&patch), None)
                .is_err()
        );
        let patch = cfg(&[("security.privileged", "true")]);
        assert!(
            op().check_instance_patch((&before, &d), Some(&patch), None)
                .is_ok()
        );
    }

    #[test]
    fn devices() {
        let ok = devs(&[
            (
                "root",
                &[
                    ("type", "disk"),
                    ("path", "/"),
                    ("pool", "default"),
                    ("size", "1GiB"),
                    ("limits.read", "10MB"),
                ],
            ),
            (
                "data",
                &[
                    ("type", "disk"),
                    ("pool", "default"),
                    ("source", "vol1"),
                    ("path", "/data"),
                    ("readonly", "true"),
                ],
            ),
            (
                "eth0",
                &[
                    ("type", "nic"),
                    ("network", "lxgbr0"),
                    ("name", "eth0"),
                    ("hwaddr", "10:66:6a:00:00:01"),
                    ("limits.max", "10Mbit"),
                ],
            ),
            ("mask", &[("type", "none")]),
        ]);
        assert!(create(&op(), &Config::new(), &ok).is_ok());
        let bad: &[(&[(&str, &str)], &str)] = &[
            (
                &[("type", "disk"), ("source", "/"), ("path", "/host")],
                "devices.h.pool",
            ),
            (
                &[
                    ("type", "disk"),
                    ("pool", "default"),
                    ("source", "/etc"),
                    ("path", "/host"),
                ],
                "devices.h.source",
            ),
            (
                &[
                    ("type", "disk"),
                    ("pool", "default"),
                    ("source", "../x"),
                    ("path", "/x"),
                ],
                "devices.h.source",
            ),
            (
                &[
                    ("type", "disk"),
                    ("pool", "default"),
                    ("source", "v"),
                    ("path", "/x"),
                    ("shift", "true"),
                ],
                "devices.h.shift",
            ),
            (
                &[
                    ("type", "disk"),
                    ("pool", "default"),
                    ("source", "v"),
                    ("path", "/x"),
                    ("propagation", "shared"),
                ],
                "devices.h.propagation",
            ),
            (
                &[
                    ("type", "disk"),
                    ("pool", "default"),
                    ("source", "v"),
                    ("path", "/x"),
                    ("recursive", "true"),
                ],
                "devices.h.recursive",
            ),
            (
                &[
                    ("type", "disk"),
                    ("pool", "default"),
                    ("source", "v"),
                    ("path", "/x"),
                    ("raw.mount.options", "x"),
                ],
                "devices.h.raw.mount.options",
            ),
            (
                &[
                    ("type", "disk"),
                    ("path", "/"),
                    ("pool", "default"),
                    ("source", "/"),
                ],
                "devices.h.source",
            ),
            (
                &[("type", "disk"), ("pool", "default"), ("path", "/x")],
                "devices.h.source",
            ),
            (
                &[("type", "nic"), ("nictype", "physical"), ("parent", "eth0")],
                "devices.h.nictype",
            ),
            (
                &[("type", "nic"), ("nictype", "macvlan"), ("parent", "eth0")],
                "devices.h.nictype",
            ),
            (
                &[("type", "nic"), ("network", "br0"), ("parent", "eth0")],
                "devices.h.parent",
            ),
            (
                &[("type", "nic"), ("network", "br0"), ("vlan", "5")],
                "devices.h.vlan",
            ),
            (&[("type", "nic"), ("name", "eth0")], "devices.h.network"),
            (&[("type", "none"), ("source", "/")], "devices.h.source"),
        ];
        for (d, field) in bad {
            let d = devs(&[("h", d)]);
            assert_eq!(
                forbidden_field(create(&op(), &Config::new(), &d)),
                *field,
                "{d:?}"
            );
            assert!(create(&Policy::admin(), &Config::new(), &d).is_ok());
        }
        for t in [
            "unix-char",
            "unix-block",
            "unix-hotplug",
            "usb",
            "gpu",
            "pci",
            "proxy",
            "infiniband",
            "tpm",
        ] {
            let d = devs(&[("h", &[("type", t)])]);
            assert_eq!(
                forbidden_field(create(&op(), &Config::new(), &d)),
                "devices.h.type"
            );
        }
        // Unchanged admin devices may stay; removing them is fine.
        let admin_dev = devs(&[("h", &[("type", "disk"), ("source", "/"), ("path", "/host")])]);
        assert!(
            op().check_instance((&Config::new(), &admin_dev), (&Config::new(), &admin_dev))
                .is_ok()
        );
        assert!(
            op().check_instance(
                (&Config::new(), &admin_dev),
                (&Config::new(), &Devices::new())
            )
            .is_ok()
        );
    }

    #[test]
    fn widening_is_read_from_the_project() {
        let project = cfg(&[
            (ALLOW_CONFIG_KEY, "security.nesting, linux.sysctl.*"),
            (ALLOW_DEVICES_KEY, "unix-char"),
        ]);
        let w = Widening::from_project_config(&project).unwrap();
        let p = Policy::restricted(w);
        assert!(create(&p, &cfg(&[("security.nesting", "true")]), &Devices::new()).is_ok());
        assert!(
            create(
                &p,
                &cfg(&[("linux.sysctl.net.core.somaxconn", "1024")]),
                &Devices::new()
            )
            .is_ok()
        );
        assert!(
            create(
                &p,
                &cfg(&[("security.privileged", "true")]),
                &Devices::new()
            )
            .is_err()
        );
        let d = devs(&[("t", &[("type", "unix-char"), ("source", "/dev/net/tun")])]);
        assert!(create(&p, &Config::new(), &d).is_ok());
        for bad in ["volatile.*", "*", "raw.lxc;x", "Security.X"] {
            assert!(
                Widening::from_project_config(&cfg(&[(ALLOW_CONFIG_KEY, bad)])).is_err(),
                "{bad}"
            );
        }
        assert!(Widening::from_project_config(&cfg(&[(ALLOW_DEVICES_KEY, "floppy")])).is_err());
    }

    #[test]
    fn volume_config() {
        let ok = cfg(&[
            ("size", "1GiB"),
            ("snapshots.expiry", "1d"),
            ("user.x", "y"),
        ]);
        assert!(op().check_volume(&Config::new(), &ok).is_ok());
        for k in [
            "security.shifted",
            "security.unmapped",
            "block.filesystem",
            "zfs.use_refquota",
        ] {
            assert_eq!(
                forbidden_field(op().check_volume(&Config::new(), &cfg(&[(k, "true")]))),
                format!("config.{k}")
            );
            assert!(
                Policy::admin()
                    .check_volume(&Config::new(), &cfg(&[(k, "true")]))
                    .is_ok()
            );
        }
    }
}
