//! What a backend call can fail with, and for a 404 what was missing.
//!
//! A leaf: it imports nothing from the crate (`crate::error` imports it and
//! turns each case into its answer, once).

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    NotFound(Missing),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("the backend is unavailable: {0}")]
    Unavailable(String),
    #[error("the backend did not answer in time: {0}")]
    Timeout(String),
    #[error("the backend refused lxgate's credentials: {0}")]
    Forbidden(String),
    /// The backend's own restrictions refused the change (a restricted Incus
    /// project): what the instance policy would refuse, said by the backend.
    #[error("{0}")]
    Restricted(String),
    #[error("TLS with the backend failed: {0}")]
    TlsFailure(String),
    /// An image over `MAX_IMAGE_BYTES` (see `image_too_large`).
    #[error("{0}")]
    ImageTooLarge(String),
    /// The host has no room left for what was being written (507).
    #[error("{0}")]
    InsufficientStorage(String),
    /// The backend answered with an error that has no closer meaning (its message is kept).
    #[error("{0}")]
    Upstream(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl BackendError {
    /// The same error again, for each of several callers that waited on one
    /// call (`Internal` keeps its message only).
    pub fn duplicate(&self) -> Self {
        match self {
            Self::NotFound(m) => Self::NotFound(m.clone()),
            Self::Conflict(s) => Self::Conflict(s.clone()),
            Self::PreconditionFailed(s) => Self::PreconditionFailed(s.clone()),
            Self::BadRequest(s) => Self::BadRequest(s.clone()),
            Self::NotSupported(s) => Self::NotSupported(s.clone()),
            Self::Unavailable(s) => Self::Unavailable(s.clone()),
            Self::Timeout(s) => Self::Timeout(s.clone()),
            Self::Forbidden(s) => Self::Forbidden(s.clone()),
            Self::Restricted(s) => Self::Restricted(s.clone()),
            Self::TlsFailure(s) => Self::TlsFailure(s.clone()),
            Self::ImageTooLarge(s) => Self::ImageTooLarge(s.clone()),
            Self::InsufficientStorage(s) => Self::InsufficientStorage(s.clone()),
            Self::Upstream(s) => Self::Upstream(s.clone()),
            Self::Internal(e) => Self::Internal(anyhow::anyhow!("{e:#}")),
        }
    }

    /// Whether the backend said no to the request itself (nothing was
    /// started), as opposed to not answering or failing on its side.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            BackendError::NotFound(_)
                | BackendError::Conflict(_)
                | BackendError::PreconditionFailed(_)
                | BackendError::BadRequest(_)
                | BackendError::NotSupported(_)
                | BackendError::Forbidden(_)
                | BackendError::Restricted(_)
                | BackendError::ImageTooLarge(_)
        )
    }
}

/// What a 404 is about, with the names the caller asked for. Its `Display`
/// is the answer's detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    Instance {
        name: String,
    },
    Snapshot {
        instance: String,
        name: String,
    },
    Backup {
        instance: String,
        name: String,
    },
    /// One of an instance's log files.
    Log {
        instance: String,
        file: String,
    },
    /// A file (or directory) read from an instance.
    File {
        instance: String,
        path: String,
    },
    /// Where a file was to be written: Incus does not say whether the
    /// instance or the file's directory is missing.
    FileDirectory {
        instance: String,
        path: String,
    },
    /// An image by fingerprint (or prefix).
    Image {
        fingerprint: String,
    },
    /// The image a new alias was to point at.
    AliasTarget {
        project: String,
        target: String,
    },
    ImageAlias {
        name: String,
    },
    Pool {
        name: String,
    },
    /// A custom volume. Incus does not say whether the project, the pool or
    /// the volume is missing: `reason` is the backend's own words.
    Volume {
        pool: String,
        name: String,
        reason: String,
    },
    /// A custom volume's snapshot (or the volume, or its pool: `reason` is
    /// the backend's own words, as for `Volume`).
    VolumeSnapshot {
        pool: String,
        volume: String,
        name: String,
        reason: String,
    },
    Network {
        name: String,
    },
    /// A network asked for its leases: only managed networks have them.
    ManagedNetwork {
        name: String,
    },
    Project {
        name: String,
    },
    Profile {
        name: String,
    },
    Operation {
        id: String,
    },
    /// A cluster member (or the target of a placement).
    Member {
        name: String,
    },
    /// Something the backend did not name (its own words): the request
    /// that got the 404 says what it asked for with `ReportMissing`.
    Other(String),
}

/// The common cases in one line (`&InstanceName` and the like are `&str`s).
impl Missing {
    pub fn instance(name: &str) -> Self {
        Self::Instance { name: name.into() }
    }

    pub fn snapshot(instance: &str, name: &str) -> Self {
        Self::Snapshot {
            instance: instance.into(),
            name: name.into(),
        }
    }

    pub fn backup(instance: &str, name: &str) -> Self {
        Self::Backup {
            instance: instance.into(),
            name: name.into(),
        }
    }

    pub fn image(fingerprint: &str) -> Self {
        Self::Image {
            fingerprint: fingerprint.into(),
        }
    }

    pub fn image_alias(name: &str) -> Self {
        Self::ImageAlias { name: name.into() }
    }

    pub fn pool(name: &str) -> Self {
        Self::Pool { name: name.into() }
    }

    pub fn network(name: &str) -> Self {
        Self::Network { name: name.into() }
    }

    pub fn project(name: &str) -> Self {
        Self::Project { name: name.into() }
    }

    pub fn operation(id: &str) -> Self {
        Self::Operation { id: id.into() }
    }

    pub fn member(name: &str) -> Self {
        Self::Member { name: name.into() }
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Instance { name } => write!(f, "instance `{name}` does not exist"),
            Missing::Snapshot { instance, name } => {
                write!(f, "instance `{instance}` has no snapshot `{name}`")
            }
            Missing::Backup { instance, name } => {
                write!(f, "instance `{instance}` has no backup `{name}`")
            }
            Missing::Log { instance, file } => {
                write!(f, "instance `{instance}` has no log file `{file}`")
            }
            Missing::File { instance, path } => {
                write!(f, "instance `{instance}` has no file `{path}`")
            }
            Missing::FileDirectory { instance, path } => write!(
                f,
                "instance `{instance}` does not exist, or the directory of `{path}` does not exist in it"
            ),
            Missing::Image { fingerprint } => {
                write!(f, "no image matches fingerprint `{fingerprint}`")
            }
            Missing::AliasTarget { project, target } => {
                write!(
                    f,
                    "no image in project `{project}` matches target `{target}`"
                )
            }
            Missing::ImageAlias { name } => write!(f, "image alias `{name}` does not exist"),
            Missing::Pool { name } => write!(f, "storage pool `{name}` does not exist"),
            Missing::Volume { pool, name, reason } => write!(
                f,
                "custom volume `{name}` in storage pool `{pool}` does not exist ({reason})"
            ),
            Missing::VolumeSnapshot {
                pool,
                volume,
                name,
                reason,
            } => write!(
                f,
                "custom volume `{volume}` in storage pool `{pool}` has no snapshot `{name}` ({reason})"
            ),
            Missing::Network { name } => write!(f, "network `{name}` does not exist"),
            Missing::ManagedNetwork { name } => write!(
                f,
                "network `{name}` does not exist or is not managed (only managed networks have leases)"
            ),
            Missing::Project { name } => write!(f, "project `{name}` does not exist"),
            Missing::Profile { name } => write!(f, "profile `{name}` does not exist"),
            Missing::Operation { id } => write!(f, "operation `{id}` does not exist"),
            Missing::Member { name } => write!(f, "cluster member `{name}` does not exist"),
            Missing::Other(words) => f.write_str(words),
        }
    }
}

/// Names what a 404 is about where a helper could not: the Incus client
/// (whose 404 only has Incus's words) and shared helpers of the embedded
/// backend. Other errors pass unchanged.
pub trait ReportMissing<T> {
    /// A 404 means `what` is missing.
    fn missing(self, what: impl FnOnce() -> Missing) -> Result<T, BackendError>;

    /// A 404 means what `what` makes of the backend's own words is missing.
    fn missing_as(self, what: impl FnOnce(String) -> Missing) -> Result<T, BackendError>;
}

impl<T> ReportMissing<T> for Result<T, BackendError> {
    fn missing(self, what: impl FnOnce() -> Missing) -> Result<T, BackendError> {
        self.missing_as(|_| what())
    }

    fn missing_as(self, what: impl FnOnce(String) -> Missing) -> Result<T, BackendError> {
        self.map_err(|e| match e {
            BackendError::NotFound(m) => BackendError::NotFound(what(m.to_string())),
            e => e,
        })
    }
}

/// Refuses an image over `MAX_IMAGE_BYTES` (`max`): `what` names what is
/// too large (the upload, a download, the unpacked image, a disk's virtual
/// size), and the message names the setting and its value.
pub fn image_too_large(what: &str, max: u64) -> BackendError {
    BackendError::ImageTooLarge(format!(
        "{what} is larger than MAX_IMAGE_BYTES allows ({})",
        human_bytes(max)
    ))
}

/// `n` bytes the way a person writes them: `8 GiB`, `64 MiB`, `1000 bytes`.
pub fn human_bytes(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_written_in_round_units() {
        assert_eq!(human_bytes(8 << 30), "8 GiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(3 << 40), "3 TiB");
        assert_eq!(human_bytes(1536), "1536 bytes");
        assert_eq!(human_bytes(0), "0 bytes");
    }

    #[test]
    fn a_404_is_named_by_the_caller_and_other_errors_pass() {
        let instance = || Missing::Instance { name: "web".into() };
        let r: Result<(), _> = Err(BackendError::NotFound(Missing::Other("x".into())));
        assert!(matches!(r.missing(instance), Err(BackendError::NotFound(m)) if m == instance()));
        let r: Result<(), _> = Err(BackendError::NotFound(Missing::Other(
            "Storage pool not found".into(),
        )));
        let volume = r.missing_as(|reason| Missing::Volume {
            pool: "p".into(),
            name: "v".into(),
            reason,
        });
        assert!(matches!(
            volume,
            Err(BackendError::NotFound(Missing::Volume { reason, .. })) if reason == "Storage pool not found"
        ));
        let r: Result<(), _> = Err(BackendError::Conflict("busy".into()));
        assert!(matches!(
            r.missing(instance),
            Err(BackendError::Conflict(_))
        ));
        assert!(Ok::<_, BackendError>(1).missing(instance).is_ok());
    }
}
