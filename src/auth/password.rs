//! argon2id password hashing, always off the async executor, and the
//! password policy. A leaf: callers turn `HashError` into their own errors.

use std::sync::{Arc, LazyLock};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::Semaphore;

/// Hashing or verifying could not run (not a wrong password: that is
/// `Ok(false)`).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// OWASP's minimum for argon2id: 19 MiB, 2 passes, 1 lane.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

fn argon2() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(MEMORY_KIB, PASSES, LANES, None).expect("static argon2 parameters are valid"),
    )
}

/// Bounds concurrent hashes so a login flood costs bounded memory (19 MiB each)
/// and cannot occupy every blocking thread.
static HASH_SLOTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    Arc::new(Semaphore::new(cpus * 2))
});

/// A hash of a random password, verified against when the user does not exist
/// so that unknown users take as long as wrong passwords.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    hash_blocking(&uuid::Uuid::new_v4().to_string()).expect("hashing a random password works")
});

fn hash_blocking(password: &str) -> Result<String, argon2::password_hash::Error> {
    // A random 16-byte salt is drawn from the OS for each hash.
    Ok(argon2().hash_password(password.as_bytes())?.to_string())
}

fn verify_blocking(password: &str, hash: &str) -> bool {
    // Argon2's verifier compares in constant time.
    argon2().verify_password(password.as_bytes(), hash).is_ok()
}

async fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HashError> {
    let _permit = HASH_SLOTS
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| HashError(e.to_string()))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HashError(e.to_string()))
}

pub async fn hash(password: String) -> Result<String, HashError> {
    on_blocking_pool(move || hash_blocking(&password))
        .await?
        .map_err(|e| HashError(format!("argon2: {e}")))
}

/// Verifies `password` against `hash`, or against a dummy hash when there is
/// no user, so both cases cost the same.
pub async fn verify(password: String, hash: Option<String>) -> Result<bool, HashError> {
    on_blocking_pool(move || match hash {
        Some(h) => verify_blocking(&password, &h),
        None => {
            verify_blocking(&password, &DUMMY_HASH);
            false
        }
    })
    .await
}

/// Computes the dummy hash ahead of time so the first unknown-user login is not slower.
pub async fn warm_up() {
    let _ = tokio::task::spawn_blocking(|| LazyLock::force(&DUMMY_HASH)).await;
}

/// The password policy: long enough, not the username, not absurdly long.
pub fn check_policy(username: &str, password: &str, min_len: usize) -> Result<(), String> {
    let len = password.chars().count();
    if len < min_len {
        return Err(format!(
            "a password needs at least {min_len} characters (got {len})"
        ));
    }
    if len > 1024 {
        return Err("a password is at most 1024 characters".into());
    }
    if password.eq_ignore_ascii_case(username) {
        return Err("the password cannot be the username".into());
    }
    if password
        .chars()
        .all(|c| c == password.chars().next().unwrap_or(c))
    {
        return Err("the password cannot be one repeated character".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = hash_blocking("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_blocking("correct horse battery", &h));
        assert!(!verify_blocking("wrong horse battery", &h));
        assert!(!verify_blocking("x", "not a hash"));
    }

    #[test]
    fn policy() {
        assert!(check_policy("bob", "short", 12).is_err());
        assert!(check_policy("bobbobbobbob", "BOBBOBBOBBOB", 12).is_err());
        assert!(check_policy("bob", "aaaaaaaaaaaaaaaa", 12).is_err());
        assert!(check_policy("bob", "a long enough passphrase", 12).is_ok());
    }
}
