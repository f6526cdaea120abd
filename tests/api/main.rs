//! Integration tests: the real lxgate over HTTP, on SQLite and PostgreSQL.

mod helpers;

mod auth_flow;
mod cli;
mod incus_transport;
mod tls;
