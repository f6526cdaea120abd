//! Changes to what authenticates a request (accounts, grants, teams,
//! logged-out tokens), as a count each server can watch to keep its
//! in-memory view of its callers (`auth::view`) current.
//!
//! Two counts: the one in the database, moved by triggers (so every writer
//! moves it, another replica or the `lxgate` shell too), and this process's
//! own, moved right after a change this process committed or learnt of.
//! The view trusts what it holds only while the local count has not moved
//! since it read it.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::AnyPool;

use super::Dialect;

/// Process-wide on purpose: a change anywhere in this process must reach
/// every view in it (the tests run several servers in one process), and the
/// database functions that make the changes take only a pool.
static LOCAL: AtomicU64 = AtomicU64::new(0);

/// Records that a change to the authentication tables was committed (or
/// may have been: over-counting only costs a database read).
pub fn changed() {
    LOCAL.fetch_add(1, Ordering::SeqCst);
}

/// This process's count of changes.
pub fn local() -> u64 {
    LOCAL.load(Ordering::SeqCst)
}

/// The database's count (a sequence on PostgreSQL, a row on SQLite).
pub async fn stored(pool: &AnyPool, dialect: Dialect) -> Result<i64, sqlx::Error> {
    let sql = match dialect {
        Dialect::Postgres => "SELECT last_value FROM auth_epoch",
        Dialect::Sqlite => "SELECT n FROM auth_epoch WHERE id = 1",
    };
    sqlx::query_scalar(sql).fetch_one(pool).await
}
