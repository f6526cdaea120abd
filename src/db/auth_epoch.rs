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

/// The database's count on SQLite (a row the triggers update).
pub async fn sqlite_count(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT n FROM auth_epoch WHERE id = 1")
        .fetch_one(pool)
        .await
}

/// The database's count on PostgreSQL (a sequence the triggers move; 0
/// before its first move), with the `xmin` and `xmax` of the snapshot it
/// was read in: a sequence moves before its transaction commits, so the
/// reader needs to know when every transaction running then has ended.
pub async fn postgres_count(conn: &mut sqlx::PgConnection) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END,
                pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
                pg_snapshot_xmax(pg_current_snapshot())::text::bigint
         FROM auth_epoch",
    )
    .fetch_one(conn)
    .await
}
