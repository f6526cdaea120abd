//! The error answers handlers document, each declared once: a type per
//! status (and meaning) with its `application/problem+json` body and the
//! standard wording, listed in `#[utoipa::path(responses(...))]` after the
//! success tuples:
//!
//! ```text
//! responses(
//!     (status = 200, description = "The instance", body = Instance),
//!     Viewer403, InstanceMissing)
//! ```
//!
//! What a handler says only of itself (which conflict, which backend cannot
//! do what, a problem `code` worth naming) stays a tuple in its annotation.
//! What every operation of a kind answers (401 when secured, 400 for a bad
//! path or query parameter, 400/415/422 for a JSON body, 413, 404 for
//! `?project=`, the 501s of `NOT_SUPPORTED`) is not listed at all:
//! `openapi::CommonResponses` adds it to the finished document.

use crate::error::Problem;

/// One `IntoResponses` type per line: `Name = status, "description";`.
/// The types only document; no handler returns one.
macro_rules! problem_responses {
    ($($(#[$attr:meta])* $name:ident = $status:tt, $description:tt;)*) => {$(
        $(#[$attr])*
        #[derive(utoipa::IntoResponses)]
        #[response(status = $status, description = $description, content_type = "application/problem+json")]
        pub struct $name(#[expect(dead_code, reason = "a contract type, never built")] Problem);
    )*};
}

problem_responses! {
    // 403 `permission_denied`: the role the operation needs.
    Viewer403 = 403, "No role in the project";
    Operator403 = 403, "No operator role in the project";
    Admin403 = 403, "Not an admin";
    /// Setting a password: admins, after an interactive login.
    AdminInteractive403 = 403, "Not an admin, or authenticated by a personal access token (`token_not_allowed`: managing credentials and roles needs an interactive login)";
    /// Personal access tokens are made after an interactive login only.
    Interactive403 = 403, "Authenticated by a personal access token (`token_not_allowed`: managing credentials needs an interactive login)";
    /// Exec, console and files: inside a privileged container only admins go.
    GuestOperator403 = 403, "No operator role in the project, or a privileged container (admins only)";
    /// Writing an instance's config or devices, checked against the project's instance policy.
    InstancePolicy403 = 403, "No operator role in the project, config or devices the instance policy does not allow the caller (the problem's `field` names the key or device option), or more than a per-user quota of the project allows (`quota_exceeded`: which quota, and the usage; `quota_needs_amount`: an amount a quota bounds is not set)";
    VolumePolicy403 = 403, "No operator role in the project, or config the policy does not allow the caller";
    /// Writing a profile: what it holds, and what it gives the instances using it.
    ProfilePolicy403 = 403, "No operator role in the project (or in the project the profile belongs to, or of an instance using it), or config or devices the instance policy does not allow the caller, in the profile or in an instance using it (the problem's `field` names the key or device option), or, in a project with per-user quotas, a change to the CPU, memory or root disk size of a profile in use (`quota_exceeded`, admins only)";
    /// An instance create: the policy (profiles included), and who may pick the cluster member.
    Placement403 = 403, "No operator role in the project (or, for a copy, in the source's project), config or devices the instance policy does not allow the caller (the problem's `field` names the key or device option), a `target` the caller may not choose in the project (`policy_denied`), or more than a per-user quota of the project allows (`quota_exceeded`: which quota, and the usage; `quota_needs_amount`: an amount a quota bounds is not set)";
    /// A volume create: the policy, and who may pick the cluster member.
    VolumePlacement403 = 403, "No operator role in the project, config the policy does not allow the caller, or a `target` the caller may not choose in the project (`policy_denied`)";

    // 404: what the path names is not there.
    InstanceMissing = 404, "No such instance";
    SnapshotMissing = 404, "No such instance or snapshot";
    BackupMissing = 404, "No such instance or backup";
    ImageMissing = 404, "No such image";
    MemberMissing = 404, "No such cluster member (`member_not_found`)";
    /// An instance create: its image and profiles in the body, its member in `?target=`.
    ImageProfileOrMemberMissing = 404, "No such image, no such instance or snapshot to copy, no such profile (`profiles`), or no such cluster member (`?target=`: `member_not_found`)";
    AliasMissing = 404, "No such alias";
    ProjectMissing = 404, "No such project";
    PoolMissing = 404, "No such pool";
    PoolOrProjectMissing = 404, "No such pool or project";
    VolumeMissing = 404, "No such volume";
    VolumeSnapshotMissing = 404, "No such volume or snapshot";
    /// A volume create names its source (a copy) in the body and its member in `?target=`.
    VolumeSourceOrMemberMissing = 404, "No such pool or project, no such source volume or snapshot, or no such cluster member (`?target=`: `member_not_found`)";
    NetworkMissing = 404, "No such network";
    ProfileMissing = 404, "No such profile";
    /// Changing an instance: it, or a profile its `profiles` names.
    InstanceOrProfileMissing = 404, "No such instance, or no such profile (`profiles`)";
    /// Restoring: the snapshot, or one of the profiles it names.
    SnapshotOrProfileMissing = 404, "No such instance or snapshot, or no such profile (the snapshot's `profiles`)";
    /// Changing a network, or its leases: only managed networks have those.
    ManagedNetworkMissing = 404, "No such managed network";
    UserMissing = 404, "No such user";
    TeamMissing = 404, "No such team";
    /// Adding a member: the team or the user.
    TeamOrUserMissing = 404, "No such team or user";
    TeamMemberMissing = 404, "No such team, user or membership";
    TeamGrantMissing = 404, "No such team, or the team has no role in the project";
    /// Another user's token is not confirmed to a caller who is not an admin.
    TokenMissing = 404, "No such personal access token (or not the caller's)";
    /// Another user's operation is not visible to a caller who is not an admin.
    OperationMissing = 404, "No such operation (or not visible to the caller)";

    // 400: refused further in.
    BackendRefused400 = 400, "Refused by the backend (e.g. a bad config key)";
    ProjectRefused400 = 400, "Refused by the backend (e.g. a bad config key), or a malformed policy allow list";
    InstanceConfig400 = 400, "A `volatile.*` key or a device without a type";
    /// What a create's body may be refused for beyond its schema.
    InstanceCreate422 = 422, "The body does not fit the schema, or a value in it is refused (`validation_failed`; `field` names it): also plain `http://` in `source.server` to a host not on `IMAGE_SERVER_ALLOWLIST`, `source.type` `none` for a container (it makes virtual machines), or a copy whose `type` is not its source's";
    /// A create also names its query's project and target, and maybe a remote server.
    InstanceCreate400 = 400, "A `volatile.*` key or a device without a type (`invalid_config`); an invalid `?project=` or `?target=` (`invalid_name`, `invalid_query`); or `could_not_fetch`: the image server (`source.server`) resolves to an address lxgate does not fetch from (loopback, link-local, private...) and is not on `IMAGE_SERVER_ALLOWLIST`, or cannot be resolved";
    /// A profile's config or devices, refused by lxgate or the backend.
    ProfileConfig400 = 400, "A `volatile.*` key, a device without a type, or config or devices the backend refuses (e.g. an unknown key, or a change an instance using the profile could not run with)";

    // 409: the conflict.
    /// Creating (or renaming to) a name another resource of the kind has.
    NameTaken409 = 409, "The name is taken";
    DeviceNameTaken409 = 409, "The device name is taken";
    ProfileDevice409 = 409, "The device comes from a profile";
    /// Deleting or renaming `default`, or deleting a profile in use.
    DefaultOrUsedProfile409 = 409, "The profile is `default` (it cannot be deleted or renamed), or is in use";
    LastAdmin409 = 409, "Would leave no enabled admin";
    TeamCreate409 = 409, "The name is taken (`name_taken`), or the server keeps no more teams (`too_many_teams`, 1,000)";
    TeamFull409 = 409, "The team has the most members it keeps (`team_full`, 5,000)";

    // 412: `If-Match`, or a read-modify-write that lost a race.
    Stale412 = 412, "The ETag does not match";
    InstanceChanged412 = 412, "The instance changed meanwhile; retry";

    NewUser422 = 422, "Invalid username or weak password";

    NotWebSocket426 = 426, "Not a WebSocket request";

    // 429: a limit of the account or the address.
    TooManyOperations429 = 429, "The account has MAX_RUNNING_OPERATIONS_PER_USER operations running";
    TooManySockets429 = 429, "The account has MAX_WEBSOCKETS_PER_USER sockets open";
    /// The per-address limit on logins, refreshes and account creation.
    AuthRateLimited429 = 429, "Too many requests from this address; see `Retry-After`";

    // 501 `not_supported`, beyond `NOT_SUPPORTED`'s per-operation entries.
    DefaultProjectSettings501 = 501, "Not supported by the backend behind lxgate (`not_supported`): the embedded backend's `default` project has no settings to change";
    DefaultPoolSettings501 = 501, "Not supported by the backend behind lxgate (`not_supported`): the embedded backend's `default` pool has no settings to change";
}
