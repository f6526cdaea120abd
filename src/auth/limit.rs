//! Rate limits on the authentication endpoints (DESIGN §5).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::error::ApiError;

/// The caller's address: the socket peer, or the nearest untrusted hop of
/// `X-Forwarded-For` when the peer is a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Walk from the right: each trusted hop vouches for the one before it.
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// Per-IP GCRA limiter shared by login, refresh, ws-ticket and user creation.
pub struct AuthLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl AuthLimiter {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
        }
    }

    /// Ok, or the seconds to wait.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        self.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// Forgets idle keys so the map cannot grow without bound.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// How long failures keep counting towards a lockout without a new one.
const FAILURE_WINDOW_SECS: i64 = 24 * 3600;
/// The longest a growing lockout gets.
const MAX_LOCKOUT_SECS: u64 = 3600;

/// Throttles failed logins (and password changes) per username *and*
/// client IP, in the database so every replica enforces the same lockouts.
/// Keyed by both, an attacker hammering `admin` from one address cannot lock
/// the admin out from another; the per-IP rate limit (`AuthLimiter`) bounds
/// how many usernames one address can try. After `max_failures` the pair is
/// locked for `lockout`, and every further failure doubles it (up to an
/// hour): a growing delay rather than a fixed door.
pub struct LoginThrottle {
    max_failures: u32,
    lockout: Duration,
}

fn now_secs() -> i64 {
    crate::auth::tokens::now_secs()
}

impl LoginThrottle {
    pub fn new(max_failures: u32, lockout: Duration) -> Self {
        Self {
            max_failures,
            lockout,
        }
    }

    /// The lockout after `failures` failures (none below the threshold).
    fn delay(&self, failures: i64) -> Option<u64> {
        let over = u64::try_from(failures - i64::from(self.max_failures)).ok()?;
        let doublings = u32::try_from(over).unwrap_or(u32::MAX).min(16);
        let base = self.lockout.as_secs().max(1);
        Some(
            base.saturating_mul(1u64 << doublings)
                .min(MAX_LOCKOUT_SECS.max(base)),
        )
    }

    /// Ok, or the seconds until `username` may try again from `ip`.
    pub async fn check(
        &self,
        pool: &sqlx::AnyPool,
        username: &str,
        ip: IpAddr,
    ) -> Result<(), ApiError> {
        let until =
            crate::db::login_failures::locked_until(pool, username, &ip.to_string()).await?;
        match until {
            Some(until) if until > now_secs() => Err(ApiError::too_many_requests(
                u64::try_from(until - now_secs()).unwrap_or(1).max(1),
            )),
            _ => Ok(()),
        }
    }

    pub async fn record_failure(
        &self,
        pool: &sqlx::AnyPool,
        username: &str,
        ip: IpAddr,
    ) -> Result<(), ApiError> {
        let (now, ip) = (now_secs(), ip.to_string());
        let failures = crate::db::login_failures::record_failure(
            pool,
            username,
            &ip,
            now,
            now - FAILURE_WINDOW_SECS,
        )
        .await?;
        if let Some(delay) = self.delay(failures) {
            let until = now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
            crate::db::login_failures::lock(pool, username, &ip, until).await?;
            tracing::info!(username, client_ip = %ip, failures, seconds = delay, "login locked");
        }
        Ok(())
    }

    pub async fn record_success(
        &self,
        pool: &sqlx::AnyPool,
        username: &str,
        ip: IpAddr,
    ) -> Result<(), ApiError> {
        crate::db::login_failures::clear(pool, username, &ip.to_string()).await?;
        Ok(())
    }

    pub async fn prune(&self, pool: &sqlx::AnyPool) {
        let now = now_secs();
        if let Err(e) = crate::db::login_failures::prune(pool, now, now - FAILURE_WINDOW_SECS).await
        {
            tracing::warn!(error = %e, "pruning login failures failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn forwarded_for_counts_only_behind_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 203.0.113.9, 10.0.0.2"),
        );
        let direct: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(client_ip(direct, &h, &trusted), direct);
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn limiter_allows_a_burst_then_refuses() {
        let l = AuthLimiter::new(60, 3);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(ip).is_ok());
        }
        let wait = l.check(ip).unwrap_err();
        assert!((1..=1).contains(&wait), "{wait}");
        assert!(l.check("127.0.0.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn lockouts_grow_with_further_failures_up_to_an_hour() {
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        assert_eq!(t.delay(1), None);
        assert_eq!(t.delay(2), None);
        assert_eq!(t.delay(3), Some(60));
        assert_eq!(t.delay(4), Some(120));
        assert_eq!(t.delay(5), Some(240));
        assert_eq!(t.delay(40), Some(3600));
        let long = LoginThrottle::new(3, Duration::from_secs(7200));
        assert_eq!(long.delay(9), Some(7200));
    }
}
