//! Per-user caps on things that hold resources while they last: open
//! WebSockets (`MAX_WEBSOCKETS_PER_USER`) and running operations
//! (`MAX_RUNNING_OPERATIONS_PER_USER`). Counted in this process: each
//! replica enforces its own cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use crate::error::ApiError;

/// What a set of slots counts, for the 429 it answers when full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    WebSockets,
    Operations,
}

impl Held {
    fn refusal(self, max: usize) -> ApiError {
        let (code, detail) = match self {
            Held::WebSockets => (
                "too_many_sockets",
                format!("this account has {max} WebSockets open, the most it may; close one first"),
            ),
            Held::Operations => (
                "too_many_operations",
                format!(
                    "this account has {max} operations running, the most it may; wait for one to finish"
                ),
            ),
        };
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, detail);
        e.retry_after = Some(5);
        e
    }
}

/// At most `max` held at once per user.
#[derive(Debug)]
pub struct UserSlots {
    max: usize,
    what: Held,
    held: Mutex<HashMap<String, usize>>,
}

/// One slot of a user; dropping it frees it.
#[derive(Debug)]
pub struct UserSlot {
    slots: Arc<UserSlots>,
    user_id: String,
}

impl UserSlots {
    pub fn new(max: usize, what: Held) -> Arc<Self> {
        Arc::new(Self {
            max,
            what,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `user_id`, or 429 (with `Retry-After`) when it holds `max`.
    pub fn acquire(self: &Arc<Self>, user_id: &str) -> Result<UserSlot, ApiError> {
        let mut held = self.held.lock().expect("slots lock poisoned");
        let n = held.entry(user_id.to_owned()).or_insert(0);
        if *n >= self.max {
            return Err(self.what.refusal(self.max));
        }
        *n += 1;
        Ok(UserSlot {
            slots: Arc::clone(self),
            user_id: user_id.to_owned(),
        })
    }

    pub fn held_by(&self, user_id: &str) -> usize {
        let held = self.held.lock().expect("slots lock poisoned");
        held.get(user_id).copied().unwrap_or(0)
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().expect("slots lock poisoned");
        if let Some(n) = held.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_user_and_freed_on_drop() {
        let slots = UserSlots::new(2, Held::WebSockets);
        let a = slots.acquire("u1").unwrap();
        let _b = slots.acquire("u1").unwrap();
        let err = slots.acquire("u1").unwrap_err();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.code, "too_many_sockets");
        assert!(slots.acquire("u2").is_ok());
        drop(a);
        assert!(slots.acquire("u1").is_ok());
        assert_eq!(slots.held_by("u2"), 0);
    }

    #[test]
    fn operations_are_refused_with_their_own_code() {
        let slots = UserSlots::new(1, Held::Operations);
        let _a = slots.acquire("u1").unwrap();
        let err = slots.acquire("u1").unwrap_err();
        assert_eq!(err.code, "too_many_operations");
        assert_eq!(err.retry_after, Some(5));
    }
}
