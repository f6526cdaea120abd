//! Rate limits on the authentication endpoints (DESIGN §5).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::app::AppState;
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

/// Middleware for the rate-limited auth routes.
pub async fn limit_by_ip(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let ip = client_ip(peer.ip(), req.headers(), &state.config.trusted_proxies);
    match state.auth_limiter.check(ip) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            tracing::info!(client_ip = %ip, "auth rate limit hit");
            ApiError::too_many_requests(wait.max(1)).into_response()
        }
    }
}

struct Failures {
    count: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

/// Throttles one username after repeated failed logins, whatever IPs they
/// come from (a per-IP limit alone does not stop a distributed guesser).
pub struct LoginThrottle {
    max_failures: u32,
    lockout: Duration,
    entries: Mutex<HashMap<String, Failures>>,
}

impl LoginThrottle {
    pub fn new(max_failures: u32, lockout: Duration) -> Self {
        Self {
            max_failures,
            lockout,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Ok, or the seconds until this username may try again.
    pub fn check(&self, username: &str) -> Result<(), u64> {
        let entries = self.entries.lock().expect("throttle lock poisoned");
        match entries.get(username).and_then(|f| f.locked_until) {
            Some(until) if until > Instant::now() => {
                let wait = until - Instant::now();
                Err(wait.as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, username: &str) {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("throttle lock poisoned");
        let f = entries.entry(username.to_owned()).or_insert(Failures {
            count: 0,
            window_start: now,
            locked_until: None,
        });
        // Failures older than the lockout window no longer count.
        if now.duration_since(f.window_start) > self.lockout {
            f.count = 0;
            f.window_start = now;
        }
        f.count += 1;
        if f.count >= self.max_failures {
            f.locked_until = Some(now + self.lockout);
            f.count = 0;
            f.window_start = now;
        }
    }

    pub fn record_success(&self, username: &str) {
        self.entries
            .lock()
            .expect("throttle lock poisoned")
            .remove(username);
    }

    pub fn prune(&self) {
        let now = Instant::now();
        let lockout = self.lockout;
        self.entries
            .lock()
            .expect("throttle lock poisoned")
            .retain(|_, f| {
                f.locked_until.is_some_and(|u| u > now)
                    || now.duration_since(f.window_start) <= lockout
            });
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
    fn throttle_locks_after_repeated_failures_and_success_clears() {
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        t.record_failure("bob");
        t.record_failure("bob");
        assert!(t.check("bob").is_ok());
        t.record_failure("bob");
        assert!(t.check("bob").unwrap_err() > 50);
        assert!(t.check("alice").is_ok());
        t.record_success("alice");
        let u = LoginThrottle::new(3, Duration::from_secs(60));
        u.record_failure("carol");
        u.record_success("carol");
        u.record_failure("carol");
        u.record_failure("carol");
        assert!(u.check("carol").is_ok());
    }
}
