//! Integration tests: the real lxgate over HTTP, on SQLite and PostgreSQL.

mod helpers;

mod auth_flow;
mod bad_input;
mod cli;
mod docs_ui;
mod embedded;
mod embedded_sources;
mod exposure;
mod image_bounds;
mod image_publish;
mod incus_backups;
mod incus_cluster;
mod incus_events;
mod incus_exec;
mod incus_files;
mod incus_images;
mod incus_instances;
mod incus_networks;
mod incus_profiles;
mod incus_projects;
mod incus_snapshots;
mod incus_sources;
mod incus_storage;
mod incus_transport;
mod limits;
mod permissions;
mod policy_escape;
mod profiles_db;
mod rbac_matrix;
mod requested_by;
mod revocation;
mod teams;
mod tls;
mod tokens;
mod users_admin;
