//! Who started which operation, as operation events show it
//! (`requested_by`): remembered when an operation is started through this
//! replica, read from the `operations` table for those started through
//! another, and cached either way so that an event reaching many
//! subscribers costs one lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::AnyPool;
use tokio::sync::OnceCell;

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
}

impl Requesters {
    fn insert(&self, id: &str, new: bool, by: Arc<OnceCell<Option<RequestedBy>>>) {
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
    }

    /// Records who started operation `id` (when this replica started it).
    pub fn remember(&self, id: &str, by: RequestedBy) {
        self.insert(id, true, Arc::new(OnceCell::new_with(Some(Some(by)))));
    }

    /// Who started operation `id` (created at `created_at`, RFC 3339)
    /// through lxgate, if anyone did.
    pub async fn lookup(&self, pool: &AnyPool, id: &str, created_at: &str) -> Option<RequestedBy> {
        let cell = {
            let entries = self.entries.lock().expect("requesters lock poisoned");
            entries
                .get(id)
                .filter(|e| e.fresh(Instant::now()))
                .map(|e| e.by.clone())
        };
        let cell = match cell {
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
                self.insert(id, new, cell.clone());
                cell
            }
        };
        cell.get_or_init(|| async {
            match tokio::time::timeout(LOOKUP_TIMEOUT, db::operations::get(pool, id)).await {
                Ok(Ok(row)) => row.as_ref().map(requested_by),
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
