//! Validated names for everything that reaches a backend or the database.
//!
//! Incus rules (DESIGN §6): 1-63 characters, ASCII letters, digits and
//! hyphens, not starting with a digit or hyphen, not ending with a hyphen.
//! A handler cannot call a backend with an unchecked string.

use std::fmt;

use serde::{Deserialize, Serialize};

pub fn check_resource_name(kind: &str, s: &str) -> Result<(), String> {
    check_name_of_length(kind, s, 63)
}

/// `check_resource_name` with another maximum length (network names are
/// interface names on the host: 15 characters, the kernel's limit).
fn check_name_of_length(kind: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!(
            "{kind} name must be 1-{max} characters (got {})",
            s.chars().count()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "{kind} name {s:?} contains {c:?}; only letters, digits and '-' are allowed"
        ));
    }
    if s.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        return Err(format!(
            "{kind} name {s:?} must not start with a digit or '-'"
        ));
    }
    if s.ends_with('-') {
        return Err(format!("{kind} name {s:?} must not end with '-'"));
    }
    Ok(())
}

/// What every checked name has: built only through `parse` (also when
/// serde reads one: a JSON field or a URL path segment, where
/// `crate::api::Path` answers a refusal with 400 `invalid_name`), and read as
/// the string it is (never the other way round).
macro_rules! checked_name {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                Self::parse(&s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

macro_rules! resource_name {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        resource_name!($(#[$doc])* $name, $kind, 63);
    };
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, String> {
                check_name_of_length($kind, s, $max).map(|()| Self(s.to_owned()))
            }
        }

        checked_name!($name);

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
    };
}

resource_name!(
    /// A project name (`default` is the project every server has).
    ProjectName,
    "project"
);

resource_name!(
    /// A team's name (a group of users granted roles as one).
    TeamName,
    "team"
);

resource_name!(
    /// An instance name (containers and virtual machines).
    InstanceName,
    "instance"
);

resource_name!(
    /// An instance snapshot's name.
    SnapshotName,
    "snapshot"
);

resource_name!(
    /// An instance backup's name.
    BackupName,
    "backup"
);

/// An image fingerprint: 1-64 lowercase hex digits (a prefix is enough
/// when it is unique, as in Incus).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct ImageFingerprint(String);

impl ImageFingerprint {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!(
                "an image fingerprint is 1-64 hex digits (got {} characters)",
                s.chars().count()
            ));
        }
        if let Some(c) = s.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(format!(
                "image fingerprint {s:?} contains {c:?}; only lowercase hex digits are allowed"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

checked_name!(ImageFingerprint);

/// An image alias name. Incus allows more than resource names (`debian/12`
/// style names live on image servers): here 1-255 characters, no `/`, no
/// whitespace or control characters, and not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct ImageAliasName(String);

impl ImageAliasName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.chars().count() > 255 {
            return Err(format!(
                "an image alias is 1-255 characters (got {})",
                s.chars().count()
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| *c == '/' || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "image alias {s:?} contains {c:?}; '/', whitespace and control characters are not allowed"
            ));
        }
        if s == "." || s == ".." {
            return Err(format!("{s:?} is not a valid image alias"));
        }
        Ok(Self(s.to_owned()))
    }
}

checked_name!(ImageAliasName);

/// A profile name, by Incus's own rule for profiles (`profilesPost`): not
/// empty, no `/`, and not `.` or `..`; and no control character (a URL
/// parser drops tabs and line breaks, so `\t..\t` would reach Incus as
/// `..`). Looser than the resource names:
/// profiles come from Incus (an admin's `gpu_large` or `web.v2`), and one an
/// instance already uses must stay usable here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct ProfileName(String);

impl ProfileName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("a profile name must not be empty".into());
        }
        if s.contains('/') || s.contains(|c: char| c.is_ascii_control()) {
            return Err(format!(
                "profile name {s:?} must not contain '/' or control characters"
            ));
        }
        if s == "." || s == ".." {
            return Err(format!("{s:?} is not a valid profile name"));
        }
        Ok(Self(s.to_owned()))
    }
}

checked_name!(ProfileName);

resource_name!(
    /// A storage pool name.
    PoolName,
    "storage pool"
);

resource_name!(
    /// A custom storage volume name.
    VolumeName,
    "storage volume"
);

resource_name!(
    /// A network name (host interfaces included: `eth0`, `lo`). Incus keeps
    /// bridges to interface names (15 characters) but not OVN or macvlan
    /// networks; new networks are held to 15 where they are created.
    NetworkName,
    "network"
);

resource_name!(
    /// An instance device name (`eth1`, `data`...).
    DeviceName,
    "device"
);

/// A cluster member's name, by Incus's rule for them (a host name label):
/// 1-63 ASCII letters, digits and hyphens, not starting or ending with a
/// hyphen. Unlike resource names it may start with a digit (members are
/// often named after hosts: `01-rack-a`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemberName(String);

impl MemberName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 63 {
            return Err(format!(
                "cluster member name must be 1-63 characters (got {})",
                s.chars().count()
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "cluster member name {s:?} contains {c:?}; only letters, digits and '-' are allowed"
            ));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(format!(
                "cluster member name {s:?} must not start or end with '-'"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

checked_name!(MemberName);

impl From<MemberName> for String {
    fn from(n: MemberName) -> String {
        n.0
    }
}

/// The name of one of an instance's log files, as Incus serves them:
/// `lxc.log`, `lxc.conf`, `qemu.log`, or `migration_`/`snapshot_`
/// followed by ASCII letters, digits, `.`, `_` and `-` (no `..`), at most 255
/// characters (`api::schemas::LOG_FILE_PATTERN` says the same).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct LogFileName(String);

impl LogFileName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let plain = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            && !s.contains("..");
        let named = matches!(s, "lxc.log" | "lxc.conf" | "qemu.log")
            || s.starts_with("migration_")
            || s.starts_with("snapshot_");
        if s.len() <= 255 && plain && named {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "log file {s:?} is not one an instance has: lxc.log, lxc.conf, qemu.log, migration_... or snapshot_... (letters, digits, '.', '_', '-', no '..'); the console's log is console/log"
            ))
        }
    }
}

checked_name!(LogFileName);

/// An operation id: a UUID, kept in its hyphenated lowercase form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct OperationId(String);

impl OperationId {
    pub fn parse(s: &str) -> Result<Self, String> {
        uuid::Uuid::parse_str(s)
            .map(|u| Self(u.to_string()))
            .map_err(|_| "an operation id is a UUID".to_owned())
    }
}

checked_name!(OperationId);

impl Default for ProjectName {
    fn default() -> Self {
        Self("default".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_fingerprints_and_aliases() {
        for ok in ["a", "0123abcdef", &"f".repeat(64)] {
            assert!(ImageFingerprint::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ABC", "xyz", "ab cd", "../a", &"0".repeat(65)] {
            assert!(ImageFingerprint::parse(bad).is_err(), "{bad:?}");
        }
        for ok in ["busybox", "debian-12.1", "a_b:c", "é", &"x".repeat(255)] {
            assert!(ImageAliasName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "a b",
            "a\tb",
            "a\u{7}",
            ".",
            "..",
            &"x".repeat(256),
        ] {
            assert!(ImageAliasName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn profile_names_follow_incus() {
        for ok in ["default", "gpu_large", "web.v2", "1st", "a b"] {
            assert!(ProfileName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "/", ".", "..", "a\0"] {
            assert!(ProfileName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn member_names_are_host_name_labels() {
        for ok in ["m1", "node-2", "01-rack-a", "9", &"x".repeat(63)] {
            assert!(MemberName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a.b",
            "a/b",
            "a b",
            "../m1",
            &"x".repeat(64),
        ] {
            assert!(MemberName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn log_file_names() {
        let longest = format!("snapshot_{}", "x".repeat(246));
        for ok in [
            "lxc.log",
            "lxc.conf",
            "qemu.log",
            "migration_1-2.log",
            &longest,
        ] {
            assert!(LogFileName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a..b",
            "a b",
            "é",
            &format!("{longest}x"),
            // Names Incus does not serve as logs.
            "exec_1-2.stdout",
            "console.log",
            "lxc.log.1",
            "qemu.conf",
        ] {
            assert!(LogFileName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn operation_ids_are_uuids_in_one_form() {
        let id = OperationId::parse("6F9619FF-8B86-D011-B42D-00C04FC964FF").unwrap();
        assert_eq!(id.as_str(), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
        for bad in ["", "not-a-uuid", "6f9619ff"] {
            assert_eq!(
                OperationId::parse(bad).unwrap_err(),
                "an operation id is a UUID"
            );
        }
    }

    #[test]
    fn incus_name_rules() {
        for ok in ["default", "a", "team-a", "A1-b2", &"x".repeat(63)] {
            assert!(ProjectName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "-abc",
            "abc-",
            "a_b",
            "a.b",
            "../etc",
            "a/b",
            "a b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(ProjectName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
