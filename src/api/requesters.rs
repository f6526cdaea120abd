//! Who started which operation, as operation events show it
//! (`requested_by`): remembered when an operation is started through this
//! replica, read from the `operations` table for those started through
//! another, and cached either way so that an event reaching many
//! subscribers costs one lookup.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::AnyPool;
use tokio::sync::{Notify, OnceCell};

use crate::auth::AuthUser;
use crate::backend::types::RequestedBy;
use crate::db;

/// Operations remembered at most (a bound on memory, not on correctness:
/// a forgotten one is read again).
const CAPACITY: usize = 10_000;
/// How long a known requester is kept.
const KNOWN_FOR: Duration = Duration::from_secs(3600);
/// How long "not started through lxgate" is believed of a new operation:
/// briefly, because its first events can arrive before it is recorded; of
/// one older than `NEW_FOR`, as long as a known one.
const UNKNOWN_FOR: Duration = Duration::from_millis(250);
const NEW_FOR: Duration = Duration::from_secs(10);
/// A lookup that takes longer leaves the event without `requested_by`
/// rather than holding the stream up.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long after first seeing an operation no record names the relay
/// waits for a start in flight here to be remembered (writing the record
/// takes milliseconds).
const START_WINDOW: Duration = Duration::from_millis(500);

struct Entry {
    at: Instant,
    /// When this replica first looked the operation up (kept across
    /// lookups again): "new" by this replica's clock, whatever the
    /// backend's says.
    first_seen: Instant,
    /// Whether the operation was new when looked up (see `UNKNOWN_FOR`).
    new: bool,
    /// Set once; concurrent lookups of the same id wait for the one query.
    by: Arc<OnceCell<Option<RequestedBy>>>,
}

impl Entry {
    fn fresh(&self, now: Instant) -> bool {
        match self.by.get() {
            Some(Some(_)) => now.duration_since(self.at) < KNOWN_FOR,
            Some(None) if !self.new => now.duration_since(self.at) < KNOWN_FOR,
            Some(None) => now.duration_since(self.at) < UNKNOWN_FOR,
            // Being looked up.
            None => true,
        }
    }
}

#[derive(Default)]
pub struct Requesters {
    entries: Mutex<HashMap<String, Entry>>,
    /// Operations this replica is starting and has not remembered yet: the
    /// backend can announce one (and, if it is quick, its end) before the
    /// request that started it has written who asked.
    starting: AtomicUsize,
    /// Told whenever an operation is remembered or a start ends.
    changed: Notify,
}

/// Held by a request from before it asks the backend to start an
/// operation until [`Requesters::remember`] has run (or the request ends
/// without one).
pub struct Starting(Arc<Requesters>);

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.starting.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

impl Requesters {
    /// Returns when this replica first saw the operation.
    fn insert(&self, id: &str, new: bool, by: Arc<OnceCell<Option<RequestedBy>>>) -> Instant {
        let mut entries = self.entries.lock().expect("requesters lock poisoned");
        let now = Instant::now();
        let first_seen = entries.get(id).map_or(now, |e| e.first_seen);
        // Seen for the first time moments ago: new, even if the backend's
        // clock (a remote server's) says the operation is older.
        let new = new || now.duration_since(first_seen) < NEW_FOR;
        if entries.len() >= CAPACITY {
            let now = Instant::now();
            entries.retain(|_, e| e.fresh(now));
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(
            id.to_owned(),
            Entry {
                at: now,
                first_seen,
                new,
                by,
            },
        );
        first_seen
    }

    /// Says an operation is about to be started through this replica.
    pub fn starting(self: &Arc<Self>) -> Starting {
        self.starting.fetch_add(1, Ordering::AcqRel);
        Starting(self.clone())
    }

    /// Records who started operation `id` (when this replica started it).
    pub fn remember(&self, id: &str, by: RequestedBy) {
        let _ = self.insert(id, true, Arc::new(OnceCell::new_with(Some(Some(by)))));
        self.changed.notify_waiters();
    }

    /// Who started `id`, if this replica has remembered it.
    fn known(&self, id: &str) -> Option<RequestedBy> {
        let entries = self.entries.lock().expect("requesters lock poisoned");
        entries.get(id)?.by.get()?.clone()
    }

    /// An operation no record names yet may be one this replica is still
    /// starting: waits (until `deadline`) for its start to be remembered,
    /// or for no start to be left.
    async fn started_here(&self, id: &str, deadline: tokio::time::Instant) -> Option<RequestedBy> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(by) = self.known(id) {
                return Some(by);
            }
            if self.starting.load(Ordering::Acquire) == 0 {
                return None;
            }
            tokio::time::timeout_at(deadline, notified).await.ok()?;
        }
    }

    /// Who started operation `id` (created at `created_at`, RFC 3339)
    /// through lxgate, if anyone did.
    pub async fn lookup(&self, pool: &AnyPool, id: &str, created_at: &str) -> Option<RequestedBy> {
        let cell = {
            let entries = self.entries.lock().expect("requesters lock poisoned");
            entries
                .get(id)
                .filter(|e| e.fresh(Instant::now()))
                .map(|e| (e.by.clone(), e.new, e.first_seen))
        };
        let (cell, new, first_seen) = match cell {
            Some(cell) => cell,
            None => {
                let age = time::OffsetDateTime::parse(
                    created_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .map(|t| time::OffsetDateTime::now_utc() - t);
                // An unreadable time counts as new: looked up again soon.
                let new = age.is_ok_and(|a| a < NEW_FOR) || age.is_err();
                let cell = Arc::new(OnceCell::new());
                let first_seen = self.insert(id, new, cell.clone());
                (cell, new, first_seen)
            }
        };
        cell.get_or_init(|| async {
            let deadline = tokio::time::Instant::now() + LOOKUP_TIMEOUT;
            // Waiting for a start is bounded per operation, not per event:
            // one started elsewhere (another replica, the `incus` CLI) while
            // a long upload holds a start here holds events up once.
            let start_deadline =
                tokio::time::Instant::from_std(first_seen + START_WINDOW).min(deadline);
            match tokio::time::timeout_at(deadline, db::operations::get(pool, id)).await {
                Ok(Ok(Some(row))) => Some(requested_by(&row)),
                Ok(Ok(None)) if new => self.started_here(id, start_deadline).await,
                Ok(Ok(None)) => None,
                Ok(Err(e)) => {
                    tracing::debug!(op = %id, error = %e, "looking up who started an operation failed");
                    None
                }
                Err(_) => None,
            }
        })
        .await
        .clone()
    }
}

impl RequestedBy {
    /// As `user` may see it: which personal access token started it, only
    /// its owner and admins.
    pub fn as_seen_by(&self, user: &AuthUser) -> RequestedBy {
        let mut by = self.clone();
        if !(user.is_admin() || user.username == by.username) {
            by.token_id = None;
        }
        by
    }
}

/// Who started the operation `record` is of.
pub fn requested_by(record: &db::operations::OperationRow) -> RequestedBy {
    RequestedBy {
        username: record.username.clone(),
        // Rows from before the column: a login's access token was all there was.
        auth_method: record
            .auth_method
            .clone()
            .unwrap_or_else(|| "bearer".to_owned()),
        token_id: record.token_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> String {
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    }

    fn alice() -> RequestedBy {
        RequestedBy {
            username: "alice".into(),
            auth_method: "bearer".into(),
            token_id: None,
        }
    }

    async fn pool() -> AnyPool {
        let db = db::Db::connect("sqlite::memory:", 1).await.unwrap();
        db.migrate().await.unwrap();
        db.pool
    }

    /// A quick operation's end can reach the relay before the request that
    /// started it has said who asked: the relay waits for that, not longer.
    #[tokio::test]
    async fn an_operation_announced_before_its_start_is_remembered_is_still_attributed() {
        let pool = pool().await;
        let requesters = Arc::new(Requesters::default());
        let starting = requesters.starting();
        let look = {
            let (requesters, pool) = (requesters.clone(), pool.clone());
            tokio::spawn(async move { requesters.lookup(&pool, "op-1", &now()).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !look.is_finished(),
            "the lookup waits for the start in flight"
        );
        requesters.remember("op-1", alice());
        drop(starting);
        assert_eq!(look.await.unwrap(), Some(alice()));

        // With no start in flight, an operation nobody recorded is nobody's
        // at once.
        let t = Instant::now();
        assert_eq!(requesters.lookup(&pool, "op-2", &now()).await, None);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );

        // A start that never names it (another operation, or a failure)
        // holds an unknown one up for START_WINDOW at most, and only once.
        let _starting = requesters.starting();
        let t = Instant::now();
        assert_eq!(requesters.lookup(&pool, "op-3", &now()).await, None);
        let waited = t.elapsed();
        assert!(
            waited >= START_WINDOW - Duration::from_millis(20) && waited < LOOKUP_TIMEOUT,
            "{waited:?}"
        );
        tokio::time::sleep(UNKNOWN_FOR).await;
        let t = Instant::now();
        assert_eq!(requesters.lookup(&pool, "op-3", &now()).await, None);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }
}
