//! `/api/v1`: one module per resource.

pub mod audit;
pub mod auth;
pub mod backups;
pub mod cluster;
pub mod events;
pub mod exec;
pub mod images;
pub mod instance_files;
pub mod instances;
pub mod networks;
pub mod operations;
pub mod permissions;
pub mod profiles;
pub mod projects;
pub mod snapshots;
pub mod storage;
pub mod system;
pub mod teams;
pub mod tokens;
pub mod users;
pub mod volume_snapshots;
