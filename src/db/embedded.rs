//! The embedded backend's inventory tables: `embedded_instances`,
//! `embedded_images`, `embedded_image_aliases`. Maps and lists are stored as
//! JSON text so both SQL dialects hold them the same way.

use sqlx::{AnyPool, FromRow};

#[derive(Debug, Clone, FromRow)]
pub struct InstanceRow {
    pub project: String,
    pub name: String,
    pub instance_type: String,
    pub description: String,
    pub architecture: String,
    /// JSON object.
    pub config: String,
    /// JSON object.
    pub devices: String,
    /// JSON array.
    pub profiles: String,
    pub ephemeral: i64,
    /// Fingerprint of the image it was created from.
    pub image: String,
    pub created_at: String,
    pub last_used_at: String,
    /// 1: a container running with the host's ids (made before lxgate
    /// mapped ids, or asked for by an admin); 0: a user-namespace id map
    /// (and every VM). Fixed at creation.
    pub privileged: i64,
}

// Macros rather than consts so the SQL stays a `&'static str` (concat!).
macro_rules! instance_columns {
    () => {
        "project, name, instance_type, description, architecture, config, devices, profiles, ephemeral, image, created_at, last_used_at, privileged"
    };
}

/// Where an instance is in its life (`phase`): a restart after lxgate was
/// killed finishes what was under way (`EmbeddedBackend::recover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its name is claimed; its files are being made.
    Creating,
    /// Made, whatever its run state.
    Ready,
    /// Its files are going.
    Deleting,
    /// Its row has the new name (`renamed_from` the old one); its files
    /// and config are following.
    Renaming,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Creating => "creating",
            Phase::Ready => "ready",
            Phase::Deleting => "deleting",
            Phase::Renaming => "renaming",
        }
    }
}

/// Claims the name (in phase `Creating`): fails with a unique violation
/// when it is taken.
pub async fn insert_instance(pool: &AnyPool, r: &InstanceRow) -> Result<(), sqlx::Error> {
    sqlx::query(concat!(
        "INSERT INTO embedded_instances (",
        instance_columns!(),
        ", phase) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'creating')"
    ))
    .bind(&r.project)
    .bind(&r.name)
    .bind(&r.instance_type)
    .bind(&r.description)
    .bind(&r.architecture)
    .bind(&r.config)
    .bind(&r.devices)
    .bind(&r.profiles)
    .bind(r.ephemeral)
    .bind(&r.image)
    .bind(&r.created_at)
    .bind(&r.last_used_at)
    .bind(r.privileged)
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn get_instance(
    pool: &AnyPool,
    project: &str,
    name: &str,
) -> Result<Option<InstanceRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        instance_columns!(),
        " FROM embedded_instances WHERE project = $1 AND name = $2"
    ))
    .bind(project)
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// Instances of one project, or of all of them, by project then name.
pub async fn list_instances(
    pool: &AnyPool,
    project: Option<&str>,
) -> Result<Vec<InstanceRow>, sqlx::Error> {
    match project {
        Some(p) => {
            sqlx::query_as(concat!(
                "SELECT ",
                instance_columns!(),
                " FROM embedded_instances WHERE project = $1 ORDER BY name"
            ))
            .bind(p)
            .fetch_all(pool)
            .await
        }
        None => {
            sqlx::query_as(concat!(
                "SELECT ",
                instance_columns!(),
                " FROM embedded_instances ORDER BY project, name"
            ))
            .fetch_all(pool)
            .await
        }
    }
}

/// Writes the editable fields back.
pub async fn update_instance(pool: &AnyPool, r: &InstanceRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE embedded_instances SET description = $3, config = $4, devices = $5, profiles = $6, ephemeral = $7, last_used_at = $8
         WHERE project = $1 AND name = $2",
    )
    .bind(&r.project)
    .bind(&r.name)
    .bind(&r.description)
    .bind(&r.config)
    .bind(&r.devices)
    .bind(&r.profiles)
    .bind(r.ephemeral)
    .bind(&r.last_used_at)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Records the image a create pulled (its config, fingerprint and
/// architecture), once the row was claimed without one.
pub async fn set_instance_image(pool: &AnyPool, r: &InstanceRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE embedded_instances SET config = $3, image = $4, architecture = $5
         WHERE project = $1 AND name = $2",
    )
    .bind(&r.project)
    .bind(&r.name)
    .bind(&r.config)
    .bind(&r.image)
    .bind(&r.architecture)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Records a start, touching nothing else of the row.
pub async fn touch_instance(
    pool: &AnyPool,
    project: &str,
    name: &str,
    last_used_at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE embedded_instances SET last_used_at = $3 WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .bind(last_used_at)
        .execute(pool)
        .await
        .map(|_| ())
}

/// The first step of a rename: the row takes the new name, remembering
/// the old one (phase `renaming`, see `end_rename` and `undo_rename`).
pub async fn begin_rename(
    pool: &AnyPool,
    project: &str,
    name: &str,
    new_name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE embedded_instances SET name = $3, phase = $4, renamed_from = $2 \
         WHERE project = $1 AND name = $2",
    )
    .bind(project)
    .bind(name)
    .bind(new_name)
    .bind(Phase::Renaming.as_str())
    .execute(pool)
    .await
    .map(|_| ())
}

/// The rename is done: the files and config follow the row.
pub async fn end_rename(pool: &AnyPool, project: &str, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE embedded_instances SET phase = 'ready', renamed_from = NULL \
         WHERE project = $1 AND name = $2",
    )
    .bind(project)
    .bind(name)
    .execute(pool)
    .await
    .map(|_| ())
}

/// The rename failed before the files moved: the row gets its old name back.
pub async fn undo_rename(pool: &AnyPool, project: &str, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE embedded_instances SET name = renamed_from, phase = 'ready', renamed_from = NULL \
         WHERE project = $1 AND name = $2 AND phase = 'renaming'",
    )
    .bind(project)
    .bind(name)
    .execute(pool)
    .await
    .map(|_| ())
}

/// A rename a killed lxgate left under way: the row (new name) and the old name.
#[derive(Debug, FromRow)]
pub struct UnfinishedRename {
    #[sqlx(flatten)]
    pub row: InstanceRow,
    pub renamed_from: String,
}

pub async fn unfinished_renames(pool: &AnyPool) -> Result<Vec<UnfinishedRename>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        instance_columns!(),
        ", renamed_from FROM embedded_instances \
         WHERE phase = 'renaming' AND renamed_from IS NOT NULL ORDER BY project, name"
    ))
    .fetch_all(pool)
    .await
}

pub async fn set_phase(
    pool: &AnyPool,
    project: &str,
    name: &str,
    phase: Phase,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE embedded_instances SET phase = $3 WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .bind(phase.as_str())
        .execute(pool)
        .await
        .map(|_| ())
}

/// The instances a killed lxgate left half made or half deleted.
pub async fn unfinished_instances(pool: &AnyPool) -> Result<Vec<InstanceRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        instance_columns!(),
        " FROM embedded_instances WHERE phase IN ('creating', 'deleting') ORDER BY project, name"
    ))
    .fetch_all(pool)
    .await
}

pub async fn delete_instance(pool: &AnyPool, project: &str, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM embedded_instances WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .execute(pool)
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------- images ---

#[derive(Debug, Clone, FromRow)]
pub struct ImageRow {
    pub project: String,
    pub fingerprint: String,
    pub image_type: String,
    pub architecture: String,
    pub size: i64,
    pub filename: String,
    /// JSON object.
    pub properties: String,
    pub public: i64,
    pub created_at: String,
    pub uploaded_at: String,
}

macro_rules! image_columns {
    () => {
        "project, fingerprint, image_type, architecture, size, filename, properties, public, created_at, uploaded_at"
    };
}

pub async fn insert_image(pool: &AnyPool, r: &ImageRow) -> Result<(), sqlx::Error> {
    sqlx::query(concat!(
        "INSERT INTO embedded_images (",
        image_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(&r.project)
    .bind(&r.fingerprint)
    .bind(&r.image_type)
    .bind(&r.architecture)
    .bind(r.size)
    .bind(&r.filename)
    .bind(&r.properties)
    .bind(r.public)
    .bind(&r.created_at)
    .bind(&r.uploaded_at)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Images of the project whose fingerprint starts with `prefix` (hex only;
/// the caller validated it, so it carries no LIKE wildcards).
pub async fn find_images(
    pool: &AnyPool,
    project: &str,
    prefix: &str,
) -> Result<Vec<ImageRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        image_columns!(),
        " FROM embedded_images WHERE project = $1 AND fingerprint LIKE $2 ORDER BY fingerprint"
    ))
    .bind(project)
    .bind(format!("{prefix}%"))
    .fetch_all(pool)
    .await
}

pub async fn list_images(
    pool: &AnyPool,
    project: Option<&str>,
) -> Result<Vec<ImageRow>, sqlx::Error> {
    match project {
        Some(p) => {
            sqlx::query_as(concat!(
                "SELECT ",
                image_columns!(),
                " FROM embedded_images WHERE project = $1 ORDER BY created_at, fingerprint"
            ))
            .bind(p)
            .fetch_all(pool)
            .await
        }
        None => {
            sqlx::query_as(concat!(
                "SELECT ",
                image_columns!(),
                " FROM embedded_images ORDER BY project, created_at, fingerprint"
            ))
            .fetch_all(pool)
            .await
        }
    }
}

pub async fn delete_image(pool: &AnyPool, project: &str, fp: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM embedded_images WHERE project = $1 AND fingerprint = $2")
        .bind(project)
        .bind(fp)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM embedded_image_aliases WHERE project = $1 AND target = $2")
        .bind(project)
        .bind(fp)
        .execute(pool)
        .await
        .map(|_| ())
}

/// How many projects still hold this image (its files go when none does).
pub async fn image_references(pool: &AnyPool, fp: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM embedded_images WHERE fingerprint = $1")
        .bind(fp)
        .fetch_one(pool)
        .await
}

/// How many instances (in any project) were made from this image: a VM's
/// disk is an overlay on the image's, so its files must stay.
pub async fn instances_using_image(pool: &AnyPool, fp: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM embedded_instances WHERE image = $1")
        .bind(fp)
        .fetch_one(pool)
        .await
}

#[derive(Debug, Clone, FromRow)]
pub struct AliasRow {
    pub project: String,
    pub name: String,
    pub target: String,
    pub description: String,
}

pub async fn insert_alias(pool: &AnyPool, r: &AliasRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO embedded_image_aliases (project, name, target, description) VALUES ($1, $2, $3, $4)",
    )
    .bind(&r.project)
    .bind(&r.name)
    .bind(&r.target)
    .bind(&r.description)
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn get_alias(
    pool: &AnyPool,
    project: &str,
    name: &str,
) -> Result<Option<AliasRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT project, name, target, description FROM embedded_image_aliases WHERE project = $1 AND name = $2",
    )
    .bind(project)
    .bind(name)
    .fetch_optional(pool)
    .await
}

pub async fn list_aliases(pool: &AnyPool, project: &str) -> Result<Vec<AliasRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT project, name, target, description FROM embedded_image_aliases WHERE project = $1 ORDER BY name",
    )
    .bind(project)
    .fetch_all(pool)
    .await
}

pub async fn delete_alias(pool: &AnyPool, project: &str, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM embedded_image_aliases WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() > 0)
}

// -------------------------------------------------------------- projects ---

#[derive(Debug, Clone, FromRow)]
pub struct ProjectRow {
    pub name: String,
    pub description: String,
    /// JSON object.
    pub config: String,
    pub created_at: String,
}

pub async fn list_projects(pool: &AnyPool) -> Result<Vec<ProjectRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, description, config, created_at FROM embedded_projects ORDER BY name",
    )
    .fetch_all(pool)
    .await
}

pub async fn get_project(pool: &AnyPool, name: &str) -> Result<Option<ProjectRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, description, config, created_at FROM embedded_projects WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
}

pub async fn insert_project(pool: &AnyPool, r: &ProjectRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO embedded_projects (name, description, config, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&r.name)
    .bind(&r.description)
    .bind(&r.config)
    .bind(&r.created_at)
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn update_project(pool: &AnyPool, r: &ProjectRow) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE embedded_projects SET description = $2, config = $3 WHERE name = $1")
        .bind(&r.name)
        .bind(&r.description)
        .bind(&r.config)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn delete_project(pool: &AnyPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM embedded_projects WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .map(|_| ())
}

// --------------------------------------------------------------- storage ---

#[derive(Debug, Clone, FromRow)]
pub struct PoolRow {
    pub name: String,
    pub driver: String,
    pub description: String,
    /// JSON object.
    pub config: String,
    pub created_at: String,
}

pub async fn list_pools(pool: &AnyPool) -> Result<Vec<PoolRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, driver, description, config, created_at FROM embedded_storage_pools ORDER BY name",
    )
    .fetch_all(pool)
    .await
}

pub async fn get_pool(pool: &AnyPool, name: &str) -> Result<Option<PoolRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, driver, description, config, created_at FROM embedded_storage_pools WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
}

pub async fn insert_pool(pool: &AnyPool, r: &PoolRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO embedded_storage_pools (name, driver, description, config, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&r.name)
    .bind(&r.driver)
    .bind(&r.description)
    .bind(&r.config)
    .bind(&r.created_at)
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn update_pool(pool: &AnyPool, r: &PoolRow) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE embedded_storage_pools SET description = $2, config = $3 WHERE name = $1")
        .bind(&r.name)
        .bind(&r.description)
        .bind(&r.config)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn delete_pool(pool: &AnyPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM embedded_storage_pools WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .map(|_| ())
}

#[derive(Debug, Clone, FromRow)]
pub struct VolumeRow {
    pub pool: String,
    pub project: String,
    pub name: String,
    pub content_type: String,
    pub description: String,
    /// JSON object.
    pub config: String,
    pub created_at: String,
}

/// Volumes of a pool, in one project or all.
pub async fn list_volumes(
    pool: &AnyPool,
    storage_pool: &str,
    project: Option<&str>,
) -> Result<Vec<VolumeRow>, sqlx::Error> {
    match project {
        Some(p) => sqlx::query_as(
            "SELECT pool, project, name, content_type, description, config, created_at FROM embedded_volumes WHERE pool = $1 AND project = $2 ORDER BY name",
        )
        .bind(storage_pool)
        .bind(p)
        .fetch_all(pool)
        .await,
        None => sqlx::query_as(
            "SELECT pool, project, name, content_type, description, config, created_at FROM embedded_volumes WHERE pool = $1 ORDER BY project, name",
        )
        .bind(storage_pool)
        .fetch_all(pool)
        .await,
    }
}

pub async fn get_volume(
    pool: &AnyPool,
    storage_pool: &str,
    project: &str,
    name: &str,
) -> Result<Option<VolumeRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT pool, project, name, content_type, description, config, created_at FROM embedded_volumes WHERE pool = $1 AND project = $2 AND name = $3",
    )
    .bind(storage_pool)
    .bind(project)
    .bind(name)
    .fetch_optional(pool)
    .await
}

pub async fn insert_volume(pool: &AnyPool, r: &VolumeRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO embedded_volumes (pool, project, name, content_type, description, config, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&r.pool)
    .bind(&r.project)
    .bind(&r.name)
    .bind(&r.content_type)
    .bind(&r.description)
    .bind(&r.config)
    .bind(&r.created_at)
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn update_volume(pool: &AnyPool, r: &VolumeRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE embedded_volumes SET description = $4, config = $5 WHERE pool = $1 AND project = $2 AND name = $3",
    )
    .bind(&r.pool)
    .bind(&r.project)
    .bind(&r.name)
    .bind(&r.description)
    .bind(&r.config)
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn delete_volume(
    pool: &AnyPool,
    storage_pool: &str,
    project: &str,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM embedded_volumes WHERE pool = $1 AND project = $2 AND name = $3")
        .bind(storage_pool)
        .bind(project)
        .bind(name)
        .execute(pool)
        .await
        .map(|_| ())
}

#[derive(Debug, Clone, FromRow)]
pub struct VolumeSnapshotRow {
    pub pool: String,
    pub project: String,
    pub volume: String,
    pub name: String,
    pub description: String,
    /// JSON object: the volume's config when the snapshot was taken.
    pub config: String,
    pub created_at: String,
    pub expires_at: String,
}

/// Every volume snapshot that expires (`expires_at` other than `never`).
pub async fn expiring_volume_snapshots(
    pool: &AnyPool,
    never: &str,
) -> Result<Vec<VolumeSnapshotRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT pool, project, volume, name, description, config, created_at, expires_at FROM embedded_volume_snapshots WHERE expires_at <> $1",
    )
    .bind(never)
    .fetch_all(pool)
    .await
}

/// A volume's snapshots, oldest first.
pub async fn list_volume_snapshots(
    pool: &AnyPool,
    storage_pool: &str,
    project: &str,
    volume: &str,
) -> Result<Vec<VolumeSnapshotRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT pool, project, volume, name, description, config, created_at, expires_at FROM embedded_volume_snapshots WHERE pool = $1 AND project = $2 AND volume = $3 ORDER BY created_at, name",
    )
    .bind(storage_pool)
    .bind(project)
    .bind(volume)
    .fetch_all(pool)
    .await
}

pub async fn get_volume_snapshot(
    pool: &AnyPool,
    storage_pool: &str,
    project: &str,
    volume: &str,
    name: &str,
) -> Result<Option<VolumeSnapshotRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT pool, project, volume, name, description, config, created_at, expires_at FROM embedded_volume_snapshots WHERE pool = $1 AND project = $2 AND volume = $3 AND name = $4",
    )
    .bind(storage_pool)
    .bind(project)
    .bind(volume)
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// Claims the name: fails with a unique violation when it is taken.
pub async fn insert_volume_snapshot(
    pool: &AnyPool,
    r: &VolumeSnapshotRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO embedded_volume_snapshots (pool, project, volume, name, description, config, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&r.pool)
    .bind(&r.project)
    .bind(&r.volume)
    .bind(&r.name)
    .bind(&r.description)
    .bind(&r.config)
    .bind(&r.created_at)
    .bind(&r.expires_at)
    .execute(pool)
    .await
    .map(|_| ())
}

/// One snapshot, or with `name` `None` every snapshot of the volume.
pub async fn delete_volume_snapshots(
    pool: &AnyPool,
    storage_pool: &str,
    project: &str,
    volume: &str,
    name: Option<&str>,
) -> Result<(), sqlx::Error> {
    match name {
        Some(n) => sqlx::query(
            "DELETE FROM embedded_volume_snapshots WHERE pool = $1 AND project = $2 AND volume = $3 AND name = $4",
        )
        .bind(storage_pool)
        .bind(project)
        .bind(volume)
        .bind(n)
        .execute(pool)
        .await,
        None => sqlx::query(
            "DELETE FROM embedded_volume_snapshots WHERE pool = $1 AND project = $2 AND volume = $3",
        )
        .bind(storage_pool)
        .bind(project)
        .bind(volume)
        .execute(pool)
        .await,
    }
    .map(|_| ())
}

// -------------------------------------------------------------- networks ---

#[derive(Debug, Clone, FromRow)]
pub struct NetworkRow {
    pub name: String,
    pub network_type: String,
    pub description: String,
    /// JSON object.
    pub config: String,
    pub created_at: String,
}

pub async fn list_networks(pool: &AnyPool) -> Result<Vec<NetworkRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, network_type, description, config, created_at FROM embedded_networks ORDER BY name",
    )
    .fetch_all(pool)
    .await
}

pub async fn get_network(pool: &AnyPool, name: &str) -> Result<Option<NetworkRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, network_type, description, config, created_at FROM embedded_networks WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// Claims the name: fails with a unique violation when it is taken.
pub async fn insert_network(pool: &AnyPool, r: &NetworkRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO embedded_networks (name, network_type, description, config, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&r.name)
    .bind(&r.network_type)
    .bind(&r.description)
    .bind(&r.config)
    .bind(&r.created_at)
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn update_network(pool: &AnyPool, r: &NetworkRow) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE embedded_networks SET description = $2, config = $3 WHERE name = $1")
        .bind(&r.name)
        .bind(&r.description)
        .bind(&r.config)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn delete_network(pool: &AnyPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM embedded_networks WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .map(|_| ())
}

// -------------------------------------------------------------- profiles ---

#[derive(Debug, Clone, FromRow)]
pub struct ProfileRow {
    pub project: String,
    pub name: String,
    pub description: String,
    /// JSON object.
    pub config: String,
    /// JSON object.
    pub devices: String,
    pub created_at: String,
}

macro_rules! profile_columns {
    () => {
        "project, name, description, config, devices, created_at"
    };
}

/// A project's profiles with a row, by name.
pub async fn list_profiles(pool: &AnyPool, project: &str) -> Result<Vec<ProfileRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        profile_columns!(),
        " FROM embedded_profiles WHERE project = $1 ORDER BY name"
    ))
    .bind(project)
    .fetch_all(pool)
    .await
}

pub async fn get_profile(
    pool: &AnyPool,
    project: &str,
    name: &str,
) -> Result<Option<ProfileRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        profile_columns!(),
        " FROM embedded_profiles WHERE project = $1 AND name = $2"
    ))
    .bind(project)
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// Claims the name: fails with a unique violation when it is taken.
pub async fn insert_profile(pool: &AnyPool, r: &ProfileRow) -> Result<(), sqlx::Error> {
    sqlx::query(concat!(
        "INSERT INTO embedded_profiles (",
        profile_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6)"
    ))
    .bind(&r.project)
    .bind(&r.name)
    .bind(&r.description)
    .bind(&r.config)
    .bind(&r.devices)
    .bind(&r.created_at)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Writes the editable fields back, adding the row of a `default` profile
/// that had none (both dialects know `ON CONFLICT ... DO UPDATE`).
pub async fn put_profile(pool: &AnyPool, r: &ProfileRow) -> Result<(), sqlx::Error> {
    sqlx::query(concat!(
        "INSERT INTO embedded_profiles (",
        profile_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (project, name) DO UPDATE SET \
         description = excluded.description, config = excluded.config, devices = excluded.devices"
    ))
    .bind(&r.project)
    .bind(&r.name)
    .bind(&r.description)
    .bind(&r.config)
    .bind(&r.devices)
    .bind(&r.created_at)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Whether there was such a row.
pub async fn delete_profile(
    pool: &AnyPool,
    project: &str,
    name: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM embedded_profiles WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() > 0)
}

/// Every profile row of a project (the project is going away).
pub async fn delete_project_profiles(pool: &AnyPool, project: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM embedded_profiles WHERE project = $1")
        .bind(project)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Renames a profile and rewrites the profile lists of the instances using
/// it (`instances`: name and its new list, as JSON) in one transaction, so
/// no instance is left naming a profile that does not exist. A unique
/// violation when the new name is taken.
pub async fn rename_profile(
    pool: &AnyPool,
    project: &str,
    name: &str,
    new_name: &str,
    instances: &[(String, String)],
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let renamed =
        sqlx::query("UPDATE embedded_profiles SET name = $3 WHERE project = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .bind(new_name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
    if !renamed {
        return Ok(false);
    }
    for (instance, profiles) in instances {
        sqlx::query("UPDATE embedded_instances SET profiles = $3 WHERE project = $1 AND name = $2")
            .bind(project)
            .bind(instance)
            .bind(profiles)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}
