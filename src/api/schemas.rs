//! The OpenAPI schemas of the checked names (`crate::names`, usernames,
//! log file names): the same rules the parsers apply, as `pattern`,
//! `minLength` and `maxLength`, so that a client or a fuzzer can tell a name
//! lxgate accepts from one it refuses with 400 `invalid_name` before sending it.
//!
//! Each is a named component; path parameters name them as the field types
//! of the structs in `crate::api::paths`, query parameters and body fields
//! with `value_type = ...`.

use std::borrow::Cow;

use serde_json::json;
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::auth::Username;
use crate::names::{
    BackupName, DeviceName, ImageAliasName, ImageFingerprint, InstanceName, LogFileName,
    MemberName, NetworkName, PoolName, ProfileName, ProjectName, SnapshotName, TeamName,
    VolumeName,
};

/// Incus's rule (`names::check_resource_name`): 1-63 ASCII letters, digits
/// and `-`, starting with a letter, not ending with `-`.
pub const RESOURCE_NAME_PATTERN: &str = "^[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";

/// `names::MemberName` (Incus's host name label): 1-63 ASCII letters,
/// digits and `-`, not starting or ending with `-`.
pub const MEMBER_NAME_PATTERN: &str = "^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";

/// `names::ImageFingerprint`: 1-64 lowercase hex digits.
pub const FINGERPRINT_PATTERN: &str = "^[0-9a-f]{1,64}$";

/// A character `names::ImageAliasName` allows: not `/`, not whitespace
/// (Rust's `char::is_whitespace`), not a control character.
const ALIAS_CHAR: &str = r"/\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// `auth::Username`: 1-64 of ASCII letters, digits, `.`, `_`, `-` and `@`,
/// starting with a letter or digit.
pub const USERNAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$";

/// A volume's mount point as `attach_volume` takes it (it matches this very
/// pattern): absolute, components of ASCII letters, digits, `.`, `_` and
/// `-` that are not `.` or `..`, no empty component, an optional trailing
/// `/`. Plain enough to go into an LXC mount entry as it is.
pub const MOUNT_PATH_PATTERN: &str = r"^(?:/(?:[A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))+/?$";

/// `names::LogFileName`: the log files Incus serves.
pub const LOG_FILE_PATTERN: &str =
    r"^(?:lxc\.log|lxc\.conf|qemu\.log|(?:migration|snapshot)_(?:\.?[A-Za-z0-9_-])*\.?)$";

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

/// A schema-only type, `$name` among the components, made by `$schema`.
macro_rules! named_schema {
    ($(#[$doc:meta])* $ty:ident, $name:expr, $schema:expr) => {
        $(#[$doc])*
        pub struct $ty;
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
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
    TeamName,
    "TeamName",
    "A team name: 1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-`.",
    RESOURCE_NAME_PATTERN,
    63,
    "platform"
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
    "A network name: 1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-` (networks lxgate creates: 2-15, see `NewNetworkName`).",
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

/// `names::ProfileName` (Incus's rule): not empty, no `/` nor an ASCII
/// control character, not `.` or `..` (without a lookahead, as
/// `alias_pattern`).
pub const PROFILE_NAME_PATTERN: &str = r"^(?:[^/\x00-\x1f\x7f]{3,}|[^./\x00-\x1f\x7f][^/\x00-\x1f\x7f]?|[^/\x00-\x1f\x7f][^./\x00-\x1f\x7f])$";

// No maxLength: Incus sets none, and a profile an admin named on Incus must
// stay reachable.
impl PartialSchema for ProfileName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A profile name, by Incus's rule: not empty, no `/` or control character, not `.` or `..` (profiles made through lxgate have `NewProfileName`s).",
            ))
            .pattern(Some(PROFILE_NAME_PATTERN))
            .min_length(Some(1))
            .examples([json!("default")])
            .into()
    }
}
impl ToSchema for ProfileName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ProfileName")
    }
}

/// The name of a new profile (`ProfileCreate.name`, a rename's `name`):
/// a resource name, as DESIGN §6 asks of every name lxgate creates.
pub struct NewProfileName;
name_schema!(
    NewProfileName,
    "NewProfileName",
    "A new profile's name: 1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-`.",
    RESOURCE_NAME_PATTERN,
    63,
    "small"
);

/// A network interface name inside an instance (`AttachNic`): a device name
/// of at most 15 characters, the kernel's limit (IFNAMSIZ).
pub struct InterfaceName;
name_schema!(
    InterfaceName,
    "InterfaceName",
    "A network interface name: 1-15 ASCII letters, digits and `-`, starting with a letter, not ending with `-` (the kernel's limit).",
    INTERFACE_NAME_PATTERN,
    15,
    "eth1"
);

/// `InterfaceName`: `RESOURCE_NAME_PATTERN` cut to 15 characters.
pub const INTERFACE_NAME_PATTERN: &str = "^[A-Za-z](?:[A-Za-z0-9-]{0,13}[A-Za-z0-9])?$";

/// The name of a new network (`NetworkCreate.name`): an interface name on
/// the host of 2-15 characters (Incus's minimum), not `all` or `default`
/// (the kernel's names for every and for new interfaces).
pub struct NewNetworkName;
name_schema!(
    NewNetworkName,
    "NewNetworkName",
    "A new network's name: 2-15 ASCII letters, digits and `-`, starting with a letter, not ending with `-`, not `all` or `default` (it is the interface name on the host).",
    NEW_NETWORK_NAME_PATTERN,
    15,
    "lxgbr0"
);

/// `NewNetworkName` (a lookahead: JSON Schema's ECMA-262 patterns have them).
pub const NEW_NETWORK_NAME_PATTERN: &str =
    "^(?!(?:all|default)$)[A-Za-z][A-Za-z0-9-]{0,13}[A-Za-z0-9]$";

named_schema!(
    /// `?project=`: a project name, or empty for `default`.
    ProjectParam,
    "ProjectParam",
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "A project name (1-63 ASCII letters, digits and `-`, starting with a letter, not ending with `-`); empty or absent: `default`.",
        ))
        .pattern(Some(format!("^(?:{})?$", &RESOURCE_NAME_PATTERN[1..RESOURCE_NAME_PATTERN.len() - 1])))
        .max_length(Some(63))
        .examples([json!("default")])
        .into()
);

/// A byte size as `storage::check_size` reads it: a positive integer
/// without leading zeros, with as many digits as its unit allows within
/// Incus's int64 (18 bare or in bytes ... 3 in PB/PiB, 1-7 EB/EiB).
pub const BYTE_SIZE_PATTERN: &str = concat!(
    "^(?:[1-9][0-9]{0,17}B?|[1-9][0-9]{0,14}(?:kB|KiB)|[1-9][0-9]{0,11}(?:MB|MiB)",
    "|[1-9][0-9]{0,8}(?:GB|GiB)|[1-9][0-9]{0,5}(?:TB|TiB)|[1-9][0-9]{0,2}(?:PB|PiB)|[1-7](?:EB|EiB))$"
);

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
        named_schema!(
            #[doc = $description]
            $ty,
            stringify!($ty),
            plain($description, &$pattern, $min, $max, $example)
        );
    };
}

plain_schema!(
    ByteSize,
    "A byte size: a positive integer without leading zeros and an optional unit (`B`, `kB`, `MB`, `GB`, `TB`, `PB`, `EB`, `KiB`, `MiB`, `GiB`, `TiB`, `PiB`, `EiB`), at most 7 EiB (18 digits bare, 15 with kB/KiB, 12 MB/MiB, 9 GB/GiB, 6 TB/TiB, 3 PB/PiB).",
    BYTE_SIZE_PATTERN,
    1,
    19,
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

named_schema!(
    /// `ExecRequest.environment`: names without `=` or NUL, values without NUL.
    ExecEnvironment,
    "ExecEnvironment",
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
);

/// A schema written as JSON (what utoipa's builders make awkward).
fn from_json(v: serde_json::Value) -> RefOr<Schema> {
    serde_json::from_value(v).expect("a valid schema")
}

named_schema!(
    /// `?wait=` and `?timeout=` seconds: any unsigned 64-bit number, used up to
    /// 300 (a larger one waits 300 s).
    WaitSeconds,
    "WaitSeconds",
    from_json(json!({
        "type": "integer",
        "minimum": 0,
        "maximum": u64::MAX,
        "description": "Seconds; more than 300 waits 300.",
        "examples": [30]
    }))
);

named_schema!(
    /// `ExecRequest.command`: the program (not empty), then its arguments.
    ExecCommand,
    "ExecCommand",
    from_json(json!({
        "type": "array",
        "description": "The program and its arguments, e.g. `[\"sh\", \"-c\", \"echo hi\"]`: the program is not empty; no element has NUL or more than 16 KiB.",
        "minItems": 1,
        "prefixItems": [{"type": "string", "pattern": "^[^\\x00]*$", "minLength": 1, "maxLength": 16384}],
        "items": {"$ref": "#/components/schemas/ExecArgument"},
        "examples": [["sh", "-c", "echo hello"]]
    }))
);

named_schema!(
    /// `InstanceCreate.source`: a local image by `alias` or by `fingerprint`,
    /// a remote one (`server`, `protocol`, and `alias` or `fingerprint`), a
    /// copy, or nothing (the derive cannot say which fields go together).
    /// Complete variants rather than an object with a `oneOf` of `required`
    /// lists: generators make one model per variant (an object-level `oneOf`
    /// loses the shared `type` field in openapi-python-client), and
    /// schemathesis fills one id at a time.
    InstanceSourceSchema,
    "InstanceSource",
    from_json(json!({
        "description": "Where a new instance comes from: a local image by `alias` or by `fingerprint` (exactly one of them); an image on a remote server (`server` and `protocol` too), pulled in the same call; a `copy` of an instance or snapshot; or `none` (an empty virtual machine).",
        "oneOf": [
            {"$ref": "#/components/schemas/InstanceSourceByAlias"},
            {"$ref": "#/components/schemas/InstanceSourceByFingerprint"},
            {"$ref": "#/components/schemas/InstanceSourceRemoteByAlias"},
            {"$ref": "#/components/schemas/InstanceSourceRemoteByFingerprint"},
            {"$ref": "#/components/schemas/InstanceSourceCopy"},
            {"$ref": "#/components/schemas/InstanceSourceNone"}
        ]
    }))
);

/// One image variant of `InstanceSource`: `id` is the field that names the
/// image; `remote`: with the server it is on.
fn instance_source_variant(
    id: &str,
    remote: bool,
    description: &str,
    id_schema: serde_json::Value,
) -> RefOr<Schema> {
    let mut properties = json!({
        "type": {"type": "string", "enum": ["image"]},
        id: id_schema
    });
    let mut required = vec!["type", id];
    if remote {
        properties["server"] = image_server_schema();
        properties["protocol"] = json!({"$ref": "#/components/schemas/ImageServerProtocol"});
        required.extend(["server", "protocol"]);
    }
    from_json(json!({
        "type": "object",
        "description": description,
        "required": required,
        "properties": properties,
        "additionalProperties": false
    }))
}

fn local_alias_schema() -> serde_json::Value {
    json!({
        "type": "string",
        "description": "An image alias on the server.",
        "pattern": alias_pattern(),
        "minLength": 1,
        "maxLength": 255,
        "examples": ["busybox"]
    })
}

fn fingerprint_schema() -> serde_json::Value {
    json!({
        "type": "string",
        "description": "An image fingerprint (or a unique prefix).",
        "pattern": FINGERPRINT_PATTERN,
        "minLength": 1,
        "maxLength": 64
    })
}

fn remote_alias_schema() -> serde_json::Value {
    json!({
        "type": "string",
        "description": "The image's alias on the server.",
        "pattern": remote_alias_pattern(),
        "minLength": 1,
        "maxLength": 255,
        "examples": ["debian/12"]
    })
}

fn image_server_schema() -> serde_json::Value {
    json!({
        "type": "string",
        "description": "`https://` URL of the image server (a host name or an IP address, an optional port and path), resolving to public addresses (plain `http://` and non-public addresses only for servers on `IMAGE_SERVER_ALLOWLIST`).",
        "pattern": IMAGE_SERVER_PATTERN,
        "maxLength": 2048,
        "examples": ["https://images.linuxcontainers.org"]
    })
}

named_schema!(
    InstanceSourceByAlias,
    "InstanceSourceByAlias",
    instance_source_variant(
        "alias",
        false,
        "A local image named by one of its aliases.",
        local_alias_schema(),
    )
);

named_schema!(
    InstanceSourceByFingerprint,
    "InstanceSourceByFingerprint",
    instance_source_variant(
        "fingerprint",
        false,
        "A local image named by its fingerprint (or a prefix that names one image).",
        fingerprint_schema(),
    )
);

named_schema!(
    InstanceSourceRemoteByAlias,
    "InstanceSourceRemoteByAlias",
    instance_source_variant(
        "alias",
        true,
        "An image on a remote image server, by its alias there, pulled into the project's images (under the same fetch rules as `POST images`).",
        remote_alias_schema(),
    )
);

named_schema!(
    InstanceSourceRemoteByFingerprint,
    "InstanceSourceRemoteByFingerprint",
    instance_source_variant(
        "fingerprint",
        true,
        "An image on a remote image server, by its fingerprint there, pulled into the project's images (under the same fetch rules as `POST images`).",
        fingerprint_schema(),
    )
);

named_schema!(
    InstanceSourceCopy,
    "InstanceSourceCopy",
    from_json(json!({
        "type": "object",
        "description": "A copy of an instance (`source` = its name) or of a snapshot (`source` = `instance/snapshot`), in `project` (default: the new instance's project; the caller must be an operator there). The copy has the source's config, devices and profiles, with the request's over them, and is held to the instance policy of the project it is made in; it carries no snapshots.",
        "required": ["type", "source"],
        "properties": {
            "type": {"type": "string", "enum": ["copy"]},
            "source": {
                "type": "string",
                "description": "`instance` or `instance/snapshot`",
                "maxLength": 127,
                "pattern": format!(
                    "^{}(?:/{})?$",
                    RESOURCE_NAME_PATTERN.trim_start_matches('^').trim_end_matches('$'),
                    RESOURCE_NAME_PATTERN.trim_start_matches('^').trim_end_matches('$')
                ),
                "examples": ["web-1", "web-1/before-upgrade"]
            },
            "project": {"oneOf": [{"$ref": "#/components/schemas/ProjectName"}, {"type": "null"}]}
        },
        "additionalProperties": false
    }))
);

named_schema!(
    InstanceSourceNone,
    "InstanceSourceNone",
    from_json(json!({
        "type": "object",
        "description": "Nothing: an empty virtual machine (a blank root disk, for an installer to fill). `type` must be `virtual-machine`.",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": ["none"]}
        },
        "additionalProperties": false
    }))
);

named_schema!(
    /// `CreateToken.projects`: project names, each once.
    TokenProjectsSchema,
    "TokenProjects",
    from_json(json!({
        "type": "array",
        "description": "The projects a personal access token is limited to, each listed once.",
        "items": {"$ref": "#/components/schemas/ProjectName"},
        "minItems": 1,
        "maxItems": 64,
        "uniqueItems": true
    }))
);

named_schema!(
    /// `ImageCopy.source`: a remote server and the image on it, by `alias` or by
    /// `fingerprint` (exactly one), as two complete variants (see
    /// `InstanceSourceSchema`).
    ImageCopySourceSchema,
    "ImageCopySource",
    from_json(json!({
        "description": "The remote server a copy comes from, and the image on it by `alias` or by `fingerprint` (exactly one of them).",
        "oneOf": [
            {"$ref": "#/components/schemas/ImageCopySourceByAlias"},
            {"$ref": "#/components/schemas/ImageCopySourceByFingerprint"}
        ]
    }))
);

named_schema!(
    /// `ImagePublish.source`: an instance by name, or a snapshot as
    /// `instance/snapshot`, as two complete variants.
    ImagePublishSourceSchema,
    "ImagePublishSource",
    from_json(json!({
        "description": "What an image is published from: `type` `instance` (`name` = the instance, which must be stopped) or `snapshot` (`name` = `instance/snapshot`), in `project` (default: the image's own project).",
        "oneOf": [
            {
                "type": "object",
                "required": ["type", "name"],
                "additionalProperties": false,
                "properties": {
                    "type": {"type": "string", "enum": ["instance"]},
                    "name": {"$ref": "#/components/schemas/InstanceName"},
                    "project": {"oneOf": [{"$ref": "#/components/schemas/ProjectName"}, {"type": "null"}]}
                }
            },
            {
                "type": "object",
                "required": ["type", "name"],
                "additionalProperties": false,
                "properties": {
                    "type": {"type": "string", "enum": ["snapshot"]},
                    "name": {
                        "type": "string",
                        "description": "`instance/snapshot`",
                        "maxLength": 127,
                        "pattern": format!(
                            "^{}/{}$",
                            RESOURCE_NAME_PATTERN.trim_start_matches('^').trim_end_matches('$'),
                            RESOURCE_NAME_PATTERN.trim_start_matches('^').trim_end_matches('$')
                        ),
                        "examples": ["web-1/before-upgrade"]
                    },
                    "project": {"oneOf": [{"$ref": "#/components/schemas/ProjectName"}, {"type": "null"}]}
                }
            }
        ]
    }))
);

named_schema!(
    /// `POST /api/v1/images`: a copy from a remote server, or a publish of an
    /// instance or snapshot (told apart by `source.type`).
    ImageCreateSchema,
    "ImageCreate",
    from_json(json!({
        "description": "A copy from a remote image server (`ImageCopy`), or an instance or snapshot published as an image (`ImagePublish`, `source.type` `instance` or `snapshot`).",
        "oneOf": [
            {"$ref": "#/components/schemas/ImageCopy"},
            {"$ref": "#/components/schemas/ImagePublish"}
        ]
    }))
);

/// An image server URL as `images::check_server_url` takes it (it matches
/// this very pattern): `https://` (or `http://`, for servers on
/// `IMAGE_SERVER_ALLOWLIST` only), a host name (its last label not numeric,
/// which the URL parser would read as an IPv4 address) or a dotted-quad IPv4
/// address or a bracketed IPv6 address, an optional port up to 65535, an
/// optional path; no credentials, query or fragment.
pub const IMAGE_SERVER_PATTERN: &str = concat!(
    r"^https?://(?:(?:[A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*",
    r"|(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    r"|\[(?:(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|(?:[0-9a-fA-F]{1,4}:){1,7}:",
    r"|(?:[0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|(?:[0-9a-fA-F]{1,4}:){1,5}(?::[0-9a-fA-F]{1,4}){1,2}",
    r"|(?:[0-9a-fA-F]{1,4}:){1,4}(?::[0-9a-fA-F]{1,4}){1,3}|(?:[0-9a-fA-F]{1,4}:){1,3}(?::[0-9a-fA-F]{1,4}){1,4}",
    r"|(?:[0-9a-fA-F]{1,4}:){1,2}(?::[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(?::[0-9a-fA-F]{1,4}){1,6}",
    r"|:(?:(?::[0-9a-fA-F]{1,4}){1,7}|:)",
    r"|::(?:[fF]{4}(?::0{1,4})?:)?(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    r")\])",
    r"(?::(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    r"(?:/[^\s?#]*)?$"
);

/// A remote image alias (`debian/12`): 1-255 characters, no whitespace or
/// control characters (`images::check_remote_alias`).
fn remote_alias_pattern() -> String {
    format!("^[^{}]{{1,255}}$", &ALIAS_CHAR[1..])
}

/// One variant of `ImageCopySource`: `id` is the field naming the image.
fn image_copy_source_variant(
    id: &str,
    description: &str,
    id_schema: serde_json::Value,
) -> RefOr<Schema> {
    from_json(json!({
        "type": "object",
        "description": description,
        "required": ["server", "protocol", id],
        "properties": {
            "server": image_server_schema(),
            "protocol": {"$ref": "#/components/schemas/ImageServerProtocol"},
            id: id_schema,
            "image_type": {
                "description": "`container` or `virtual-machine`, when the alias names both.",
                "oneOf": [{"$ref": "#/components/schemas/InstanceType"}, {"type": "null"}]
            }
        },
        "additionalProperties": false
    }))
}

named_schema!(
    ImageCopySourceByAlias,
    "ImageCopySourceByAlias",
    image_copy_source_variant(
        "alias",
        "An image on a remote server, by its alias there.",
        remote_alias_schema(),
    )
);

named_schema!(
    ImageCopySourceByFingerprint,
    "ImageCopySourceByFingerprint",
    image_copy_source_variant(
        "fingerprint",
        "An image on a remote server, by its fingerprint.",
        json!({
            "type": "string",
            "description": "The image's fingerprint (or a unique prefix) on the server.",
            "pattern": FINGERPRINT_PATTERN,
            "minLength": 1,
            "maxLength": 64
        }),
    )
);

named_schema!(
    /// `POST storage/pools/{pool}/volumes`: an empty volume (with its
    /// `content_type`) or a copy (with `source`, the content type its
    /// source's), as two complete variants, so a copy with a content type
    /// is no valid request.
    StorageVolumeCreateSchema,
    "StorageVolumeCreate",
    from_json(json!({
        "description": "A new custom volume: empty (`content_type` `filesystem`, the default, or `block`), or with `source` a copy of another volume or of one of its snapshots (its content type is the source's). `config` holds settings such as `{\"size\": \"10GiB\"}`; a copy given none takes its source's (as Incus does).",
        "oneOf": [
            {
                "type": "object",
                "title": "NewStorageVolume",
                "required": ["name"],
                "additionalProperties": false,
                "properties": {
                    "name": {"$ref": "#/components/schemas/VolumeName"},
                    "content_type": {"oneOf": [{"$ref": "#/components/schemas/VolumeContentType"}, {"type": "null"}]},
                    "description": {"type": "string"},
                    "config": {"$ref": "#/components/schemas/ConfigMap"},
                    "source": {"type": "null"}
                }
            },
            {
                "type": "object",
                "title": "StorageVolumeCopy",
                "required": ["name", "source"],
                "additionalProperties": false,
                "properties": {
                    "name": {"$ref": "#/components/schemas/VolumeName"},
                    "content_type": {"type": "null"},
                    "description": {"type": "string"},
                    "config": {"$ref": "#/components/schemas/ConfigMap"},
                    "source": {"$ref": "#/components/schemas/VolumeSource"}
                }
            }
        ]
    }))
);

named_schema!(
    /// A volume's mount point inside an instance (`MOUNT_PATH_PATTERN`).
    MountPath,
    "MountPath",
    from_json(json!({
        "type": "string",
        "description": "A mount point inside the instance: absolute, of components of ASCII letters, digits, `.`, `_` and `-` (not `.` or `..`), no `//`; at most 4096 bytes.",
        "minLength": 2,
        "maxLength": 4096,
        "pattern": MOUNT_PATH_PATTERN,
        "examples": ["/mnt/data"]
    }))
);

name_schema!(
    MemberName,
    "MemberName",
    "A cluster member name: 1-63 ASCII letters, digits and `-`, not starting or ending with `-`.",
    MEMBER_NAME_PATTERN,
    63,
    "m1"
);

// A log file name of `GET instances/{name}/logs/{file}`.
name_schema!(
    LogFileName,
    "LogFileName",
    "A log file name, as Incus serves them: `lxc.log`, `lxc.conf`, `qemu.log`, or `migration_...`/`snapshot_...` (ASCII letters, digits, `.`, `_` and `-`, no `..`), at most 255 characters. The console's log is `GET instances/{name}/console/log`.",
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
        let profile = re(PROFILE_NAME_PATTERN);
        for s in [
            "default",
            "gpu_large",
            "web.v2",
            "1st",
            "a b",
            ".a",
            "a.",
            "...",
            "a",
            "",
            "a/b",
            "/",
            ".",
            "..",
        ] {
            assert_eq!(profile.is_match(s), ProfileName::parse(s).is_ok(), "{s:?}");
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
        // Every server the pattern takes is a URL with a host (what
        // `images::check_server_url` parses); the refusals are the shapes
        // schemathesis found (no host) and what the parser refuses.
        let servers = re(IMAGE_SERVER_PATTERN);
        for (s, ok) in [
            ("https://images.linuxcontainers.org", true),
            ("https://example.com:8443/some/path", true),
            ("https://10.1.2.3", true),
            ("https://a", true),
            ("https://", false),
            ("https://1.2.3.999", false),
            ("https://host:65536", false),
            ("https://u:p@host", false),
            ("https://host/?q", false),
            ("https://host/#f", false),
            ("http://host", true),
            ("HTTPS://host", false),
            ("https://[::1]", true),
            ("https://[::ffff:192.168.0.1]/", true),
            ("https://[fe80::1]:8443/x", true),
            ("https://[:::1]", false),
            ("https://[1::2::3]", false),
            ("https://host./", false),
        ] {
            assert_eq!(servers.is_match(s), ok, "{s:?}");
            if ok {
                let url = reqwest::Url::parse(s).expect(s);
                assert!(url.host_str().is_some_and(|h| !h.is_empty()), "{s:?}");
            }
        }
        let remote = re(&remote_alias_pattern());
        for (s, ok) in [
            ("debian/12", true),
            ("a", true),
            ("", false),
            ("a b", false),
            ("a\u{85}", false),
        ] {
            assert_eq!(remote.is_match(s), ok, "{s:?}");
        }
        let sizes = re(BYTE_SIZE_PATTERN);
        for s in [
            "1",
            "10GiB",
            "7EiB",
            "8EiB",
            "9EB",
            "010GiB",
            "0",
            "999999999999999999",
            "9999999999999999999",
            "999999999GiB",
            "1000000000GiB",
            "1000PB",
            "999PiB",
            "1gib",
            "",
        ] {
            assert_eq!(
                sizes.is_match(s),
                crate::api::v1::storage::check_size(s).is_ok(),
                "{s:?}"
            );
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
        let mounts = re(MOUNT_PATH_PATTERN);
        for (p, ok) in [
            ("/mnt/data", true),
            ("/srv/data/", true),
            ("/a/.hidden/...x/..y", true),
            ("/", false),
            ("//a", false),
            ("/a//b", false),
            ("/a/./b", false),
            ("/a/..", false),
            ("/..", false),
            ("relative", false),
            ("/a b", false),
            ("/a\nb", false),
        ] {
            assert_eq!(mounts.is_match(p), ok, "{p:?}");
        }
        let members = re(MEMBER_NAME_PATTERN);
        for s in [
            "m1",
            "01-rack",
            "9",
            &"m".repeat(63),
            "",
            "-a",
            "a-",
            "a.b",
            &"m".repeat(64),
        ] {
            assert_eq!(members.is_match(s), MemberName::parse(s).is_ok(), "{s:?}");
        }
        let logs = re(LOG_FILE_PATTERN);
        for (s, ok) in [
            ("lxc.log", true),
            ("qemu.log", true),
            ("qemu.conf", false),
            ("snapshot_x.log", true),
            ("migration_", true),
            ("migration_a.", true),
            ("snapshot_.a", true),
            ("console.log", false),
            ("0", false),
            ("snapshot_a..b", false),
            ("snapshot_a/b", false),
            ("lxc.log2", false),
            (".", false),
            ("..", false),
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
