//! The OpenAPI schemas of the checked names (`crate::names`, usernames,
//! log file names): the same rules the parsers apply, as `pattern`,
//! `minLength` and `maxLength`, so that a client or a fuzzer can tell a name
//! lxgate accepts from one it refuses with 400 `invalid_name` before sending it.
//!
//! Each is a named component; path and query parameters and body fields name
//! them with `value_type = ...` (tuple parameters: `("name" = InstanceName, Path, ...)`).

use std::borrow::Cow;

use serde_json::json;
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::auth::Username;
use crate::names::{
    BackupName, DeviceName, ImageAliasName, ImageFingerprint, InstanceName, LogFileName,
    NetworkName, PoolName, ProjectName, SnapshotName, VolumeName,
};

/// Incus's rule (`names::check_resource_name`): 1-63 ASCII letters, digits
/// and `-`, starting with a letter, not ending with `-`.
pub const RESOURCE_NAME_PATTERN: &str = "^[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";

/// `names::ImageFingerprint`: 1-64 lowercase hex digits.
pub const FINGERPRINT_PATTERN: &str = "^[0-9a-f]{1,64}$";

/// A character `names::ImageAliasName` allows: not `/`, not whitespace
/// (Rust's `char::is_whitespace`), not a control character.
const ALIAS_CHAR: &str = r"/\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// `auth::Username`: 1-64 of ASCII letters, digits, `.`, `_`, `-` and `@`,
/// starting with a letter or digit.
pub const USERNAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$";

/// `names::LogFileName`: 1-255 of ASCII letters, digits, `.`, `_` and
/// `-`, no `..`, not `.`.
pub const LOG_FILE_PATTERN: &str = r"^(?:\.?[A-Za-z0-9_-])+\.?$";

fn alias_pattern() -> String {
    // Not `.` or `..` either, without a lookahead: one character that is not
    // a dot, two of which one is not a dot, or three and more.
    let any = format!("[^{ALIAS_CHAR}]");
    let not_dot = format!("[^.{ALIAS_CHAR}]");
    format!("^(?:{any}{{3,255}}|{not_dot}{any}?|{any}{not_dot})$")
}

fn string_schema(
    description: &str,
    pattern: &str,
    max_length: usize,
    example: &str,
) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .min_length(Some(1))
        .max_length(Some(max_length))
        .examples([json!(example)])
        .into()
}

macro_rules! name_schema {
    ($ty:ty, $name:literal, $description:literal, $pattern:expr, $max:expr, $example:literal) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                string_schema($description, &$pattern, $max, $example)
            }
        }
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

name_schema!(
    InstanceName,
    "InstanceName",
    "An instance name: 1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-`.",
    RESOURCE_NAME_PATTERN,
    63,
    "web-1"
);
name_schema!(
    ProjectName,
    "ProjectName",
    "A project name: 1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-`.",
    RESOURCE_NAME_PATTERN,
    63,
    "default"
);
name_schema!(
    SnapshotName,
    "SnapshotName",
    "A snapshot name: 1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-`.",
    RESOURCE_NAME_PATTERN,
    63,
    "before-upgrade"
);
name_schema!(
    BackupName,
    "BackupName",
    "A backup name: 1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-`.",
    RESOURCE_NAME_PATTERN,
    63,
    "nightly"
);
name_schema!(
    PoolName,
    "PoolName",
    "A storage pool name: 1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-`.",
    RESOURCE_NAME_PATTERN,
    63,
    "default"
);
name_schema!(
    VolumeName,
    "VolumeName",
    "A storage volume name: 1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-`.",
    RESOURCE_NAME_PATTERN,
    63,
    "data"
);
name_schema!(
    NetworkName,
    "NetworkName",
    "A network name: 1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-`.",
    RESOURCE_NAME_PATTERN,
    63,
    "lxgbr0"
);
name_schema!(
    DeviceName,
    "DeviceName",
    "An instance device name: 1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-`.",
    RESOURCE_NAME_PATTERN,
    63,
    "eth1"
);
name_schema!(
    ImageFingerprint,
    "ImageFingerprint",
    "An image fingerprint, or a prefix of it that names one image: 1-64 lowercase hex digits.",
    FINGERPRINT_PATTERN,
    64,
    "06b86454720d"
);
name_schema!(
    ImageAliasName,
    "ImageAliasName",
    "An image alias: 1-255 characters, no `/`, whitespace or control characters, not `.` or `..`.",
    alias_pattern(),
    255,
    "busybox"
);
name_schema!(
    Username,
    "Username",
    "A username: 1-64 ASCII letters, digits, `.`, `_`, `-` and `@`, starting with a letter or digit.",
    USERNAME_PATTERN,
    64,
    "alice"
);

/// `?project=`: a project name, or empty for `default`.
pub struct ProjectParam;
impl PartialSchema for ProjectParam {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A project name (1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-`); empty or absent: `default`.",
            ))
            .pattern(Some(format!("^(?:{})?$", &RESOURCE_NAME_PATTERN[1..RESOURCE_NAME_PATTERN.len() - 1])))
            .max_length(Some(63))
            .examples([json!("default")])
            .into()
    }
}
impl ToSchema for ProjectParam {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ProjectParam")
    }
}

/// A byte size as `storage::check_size` reads it: 1-19 digits, not all
/// zeros, and an optional unit.
pub const BYTE_SIZE_PATTERN: &str =
    "^(?!0+(?:[A-Za-z]|$))[0-9]{1,19}(?:B|kB|MB|GB|TB|PB|EB|KiB|MiB|GiB|TiB|PiB|EiB)?$";

/// An absolute path inside an instance: starts with `/`, no NUL (at most
/// 4096 bytes: `maxLength` says characters, the same for ASCII).
pub const ABSOLUTE_PATH_PATTERN: &str = r"^/[^\x00]*$";

/// Octal permission bits, at most `7777`.
pub const FILE_MODE_PATTERN: &str = "^0?[0-7]{1,4}$";

fn plain(description: &str, pattern: &str, min: usize, max: usize, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .min_length(Some(min))
        .max_length(Some(max))
        .examples([json!(example)])
        .into()
}

macro_rules! plain_schema {
    ($ty:ident, $description:literal, $pattern:expr, $min:expr, $max:expr, $example:literal) => {
        #[doc = $description]
        pub struct $ty;
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                plain($description, &$pattern, $min, $max, $example)
            }
        }
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($ty))
            }
        }
    };
}

plain_schema!(
    ByteSize,
    "A byte size: a positive integer (at most 19 digits) with an optional unit (`B`, `kB`, `MB`, `GB`, `TB`, `PB`, `EB`, `KiB`, `MiB`, `GiB`, `TiB`, `PiB`, `EiB`).",
    BYTE_SIZE_PATTERN,
    1,
    22,
    "10GiB"
);
plain_schema!(
    AbsolutePath,
    "An absolute path inside the instance: starts with `/`, no NUL, at most 4096 bytes.",
    ABSOLUTE_PATH_PATTERN,
    1,
    4096,
    "/etc/hostname"
);
plain_schema!(
    FileMode,
    "Permission bits in octal, at most `7777`.",
    FILE_MODE_PATTERN,
    1,
    5,
    "0644"
);
plain_schema!(
    ExecArgument,
    "One argv element: no NUL, at most 16 KiB.",
    r"^[^\x00]*$",
    0,
    16384,
    "sh"
);

/// `ExecRequest.environment`: names without `=` or NUL, values without NUL.
pub struct ExecEnvironment;
impl PartialSchema for ExecEnvironment {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Extra environment variables: names without `=` or NUL, values without NUL.",
            ))
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^[^=\x00]+$"))
                    .min_length(Some(1)),
            ))
            .additional_properties(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^[^\x00]*$")),
            ))
            .examples([json!({"TERM": "xterm"})])
            .into()
    }
}
impl ToSchema for ExecEnvironment {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ExecEnvironment")
    }
}

/// A schema written as JSON (what utoipa's builders make awkward).
fn from_json(v: serde_json::Value) -> RefOr<Schema> {
    serde_json::from_value(v).expect("a valid schema")
}

/// `?wait=` and `?timeout=` seconds: any unsigned 64-bit number, used up to
/// 300 (a larger one waits 300 s).
pub struct WaitSeconds;
impl PartialSchema for WaitSeconds {
    fn schema() -> RefOr<Schema> {
        from_json(json!({
            "type": "integer",
            "minimum": 0,
            "maximum": u64::MAX,
            "description": "Seconds; more than 300 waits 300.",
            "examples": [30]
        }))
    }
}
impl ToSchema for WaitSeconds {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("WaitSeconds")
    }
}

/// `ExecRequest.command`: the program (not empty), then its arguments.
pub struct ExecCommand;
impl PartialSchema for ExecCommand {
    fn schema() -> RefOr<Schema> {
        from_json(json!({
            "type": "array",
            "description": "The program and its arguments, e.g. `[\"sh\", \"-c\", \"echo hi\"]`: the program is not empty; no element has NUL or more than 16 KiB.",
            "minItems": 1,
            "prefixItems": [{"type": "string", "pattern": "^[^\\x00]*$", "minLength": 1, "maxLength": 16384}],
            "items": {"$ref": "#/components/schemas/ExecArgument"},
            "examples": [["sh", "-c", "echo hello"]]
        }))
    }
}
impl ToSchema for ExecCommand {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ExecCommand")
    }
}

/// `InstanceCreate.source`: exactly one of `alias` and `fingerprint` (the
/// derive cannot say so). Named `InstanceSource`, as the type it documents.
/// The two ids are inline and without examples: schemathesis fills an object
/// from its properties' examples, both ids at once.
pub struct InstanceSourceSchema;
impl PartialSchema for InstanceSourceSchema {
    fn schema() -> RefOr<Schema> {
        from_json(json!({
            "type": "object",
            "description": "Where a new instance comes from: a local image, by `alias` or by `fingerprint` (exactly one of them).",
            "required": ["type"],
            "properties": {
                "type": {"$ref": "#/components/schemas/InstanceSourceType"},
                "alias": {
                    "type": ["string", "null"],
                    "description": "An image alias on the server.",
                    "pattern": alias_pattern(),
                    "minLength": 1,
                    "maxLength": 255
                },
                "fingerprint": {
                    "type": ["string", "null"],
                    "description": "An image fingerprint (or a unique prefix) on the server.",
                    "pattern": FINGERPRINT_PATTERN,
                    "minLength": 1,
                    "maxLength": 64
                }
            },
            "additionalProperties": false,
            "oneOf": [
                {"required": ["alias"], "properties": {"alias": {"type": "string"}}},
                {"required": ["fingerprint"], "properties": {"fingerprint": {"type": "string"}}}
            ],
            "examples": [{"type": "image", "alias": "busybox"}]
        }))
    }
}
impl ToSchema for InstanceSourceSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("InstanceSource")
    }
}

// A log file name of `GET instances/{name}/logs/{file}`.
name_schema!(
    LogFileName,
    "LogFileName",
    "A log file name: 1-255 ASCII letters, digits, `.`, `_` and `-`, no `..`, not `.`.",
    LOG_FILE_PATTERN,
    255,
    "lxc.log"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn re(p: &str) -> regex::Regex {
        regex::Regex::new(p).unwrap()
    }

    #[test]
    fn patterns_agree_with_the_parsers() {
        let names = re(RESOURCE_NAME_PATTERN);
        for s in [
            "a",
            "web-1",
            "A1-b2",
            &"x".repeat(63),
            "1abc",
            "-a",
            "a-",
            "a_b",
            "é",
            "",
            &"x".repeat(64),
        ] {
            assert_eq!(names.is_match(s), ProjectName::parse(s).is_ok(), "{s:?}");
        }
        let fp = re(FINGERPRINT_PATTERN);
        for s in [
            "a",
            "0123abcdef",
            &"f".repeat(64),
            "",
            "ABC",
            "xyz",
            &"0".repeat(65),
        ] {
            assert_eq!(fp.is_match(s), ImageFingerprint::parse(s).is_ok(), "{s:?}");
        }
        let alias = re(&alias_pattern());
        for s in [
            "busybox",
            "debian-12.1",
            "a_b:c",
            "é",
            ".a",
            "a.",
            "...",
            &"x".repeat(255),
            "",
            "a/b",
            "a b",
            "a\tb",
            "a\u{7}",
            "a\u{85}b",
            "a\u{3000}",
            ".",
            "..",
            &"x".repeat(256),
        ] {
            assert_eq!(alias.is_match(s), ImageAliasName::parse(s).is_ok(), "{s:?}");
        }
        let users = re(USERNAME_PATTERN);
        for s in [
            "alice",
            "a.b@c",
            "0x",
            &"u".repeat(64),
            "",
            ".a",
            "a b",
            "é",
            &"u".repeat(65),
        ] {
            assert_eq!(users.is_match(s), Username::parse(s).is_ok(), "{s:?}");
        }
        let logs = re(LOG_FILE_PATTERN);
        for (s, ok) in [
            ("lxc.log", true),
            (".a", true),
            ("a.", true),
            ("a.b.c", true),
            (".", false),
            ("..", false),
            ("a..b", false),
            ("a/b", false),
            ("", false),
        ] {
            assert_eq!(logs.is_match(s), ok, "{s:?}");
            assert_eq!(LogFileName::parse(s).is_ok(), ok, "{s:?}");
        }
    }
}

/// Raw bytes in the OpenAPI document (a file's or a tarball's content).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct BinaryContent(pub Vec<u8>);
