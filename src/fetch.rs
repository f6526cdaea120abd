//! Every URL lxgate itself fetches (today: image servers) goes through here,
//! because an admin-supplied URL is a request lxgate makes from inside the
//! host's network: without these rules it reaches cloud metadata
//! (169.254.169.254), services bound to loopback, and the private network.
//!
//! The rules: https only (plain http only to a host on `IMAGE_SERVER_ALLOWLIST`);
//! the host is resolved once, and every address must be public unless the host
//! is on the allow list; the connection is then pinned to exactly those
//! addresses, so a second DNS answer (rebinding) cannot move it; a redirect is
//! followed only within the same origin, which is pinned the same way; no
//! proxy from the environment (it would resolve the name itself). A refusal or
//! a failed connection says only "could not fetch <url>": the cause is logged,
//! never returned, so the error cannot serve as a port scanner.
//!
//! A leaf: it imports nothing from the rest of lxgate.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use reqwest::{Url, redirect};

/// Redirects followed within one origin before giving up.
const MAX_REDIRECTS: usize = 5;
/// A resolver that never answers must not hold a request (the check runs
/// while the client waits for its answer).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Hosts (any port) or `host:port` pairs that may be fetched over plain http
/// and may resolve to addresses that are otherwise refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist(Vec<(String, Option<u16>)>);

impl Allowlist {
    /// Whether `host` (as `Url::host_str` spells it) on `port` is listed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.0
            .iter()
            .any(|(h, p)| h.eq_ignore_ascii_case(host) && p.is_none_or(|p| p == port))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A comma list of `host`, `host:port`, `[v6]` or `[v6]:port`.
impl FromStr for Allowlist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = || format!("entry {item:?} is not a host or host:port");
            // Split the port off by hand: a URL parser would drop a scheme's
            // default port (`:443`) and so widen the entry to every port.
            let (host, port) = match item.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                    (h, Some(p.parse::<u16>().map_err(|_| bad())?))
                }
                _ => (item, None),
            };
            // The URL parser normalizes the host the way it will be compared
            // (lower case, IDNA, canonical IP text).
            let url = Url::parse(&format!("https://{host}/")).map_err(|_| bad())?;
            match url.host_str() {
                Some(h)
                    if url.port().is_none()
                        && url.path() == "/"
                        && url.username().is_empty()
                        && url.password().is_none() =>
                {
                    out.push((h.to_owned(), port));
                }
                _ => return Err(bad()),
            }
        }
        Ok(Self(out))
    }
}

/// Why an address is not fetched from without the allow list, or `None` for
/// a public one.
pub fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    // std has no stable `is_global`/`is_shared`; the ranges it lacks are
    // spelled out with ipnet.
    const CGNAT: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10);
    const THIS_NETWORK: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 8);
    const RESERVED: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4);
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private")
    } else if CGNAT.contains(&ip) {
        Some("shared (CGNAT)")
    } else if THIS_NETWORK.contains(&ip) {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || RESERVED.contains(&ip) {
        Some("broadcast or reserved")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // An IPv4 address carried in IPv6 reaches the IPv4 host: judge that.
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (deprecated compatible form) and
    // the NAT64 prefix 64:ff9b::/96 all do.
    const NAT64: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);
    const COMPATIBLE: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 96);
    const SITE_LOCAL: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10);
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return refused_v4(v4);
    }
    if NAT64.contains(&ip) || COMPATIBLE.contains(&ip) {
        let [.., a, b, c, d] = ip.octets();
        return refused_v4(Ipv4Addr::new(a, b, c, d));
    }
    if ip.is_unicast_link_local() {
        Some("link-local")
    } else if ip.is_unique_local() || SITE_LOCAL.contains(&ip) {
        Some("private")
    } else if ip.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

/// A fetch refused or failed. Shown to the caller as "could not fetch <url>"
/// only; the reason is for the log.
#[derive(Debug)]
pub struct FetchError {
    url: String,
    reason: String,
    /// The HTTP status of a server that passed the checks and answered:
    /// worth telling the admin, and it says nothing about closed ports.
    status: Option<reqwest::StatusCode>,
}

impl FetchError {
    fn new(url: &Url, reason: impl Into<String>) -> Self {
        let e = Self {
            url: url.to_string(),
            reason: reason.into(),
            status: None,
        };
        tracing::warn!(url = %e.url, reason = %e.reason, "image server fetch refused or failed");
        e
    }

    /// The logged cause (for tests and the log, never for a client).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not fetch {}", self.url)?;
        match self.status {
            Some(status) => write!(f, " (the server answered {status})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for FetchError {}

/// Fetches under the rules above; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Fetcher {
    allow: Arc<Allowlist>,
}

impl Fetcher {
    pub fn new(allow: Allowlist) -> Self {
        Self {
            allow: Arc::new(allow),
        }
    }

    /// The scheme rule alone, without DNS: https, or http to a listed host.
    /// Says why in words meant for the admin who typed the URL.
    pub fn check_scheme(&self, url: &Url) -> Result<(), String> {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err("must be an https:// URL with a host".into());
        };
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.allow.allows(host, port) => Ok(()),
            "http" => Err(
                "must use https:// (plain http:// only to a host on IMAGE_SERVER_ALLOWLIST)".into(),
            ),
            _ => Err("must be an https:// URL".into()),
        }
    }

    /// Resolves `url`'s host once and checks every address it gave.
    pub async fn check(&self, url: &Url) -> Result<Vec<SocketAddr>, FetchError> {
        self.check_scheme(url)
            .map_err(|why| FetchError::new(url, why))?;
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Err(FetchError::new(url, "no host"));
        };
        let listed = self.allow.allows(url.host_str().unwrap_or_default(), port);
        let addrs: Vec<SocketAddr> = match host {
            url::Host::Ipv4(ip) => vec![SocketAddr::new(ip.into(), port)],
            url::Host::Ipv6(ip) => vec![SocketAddr::new(ip.into(), port)],
            url::Host::Domain(name) => {
                match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
                    .await
                {
                    Err(_) => return Err(FetchError::new(url, "resolving timed out")),
                    Ok(Err(e)) => return Err(FetchError::new(url, format!("resolving: {e}"))),
                    Ok(Ok(found)) => found.collect(),
                }
            }
        };
        if addrs.is_empty() {
            return Err(FetchError::new(url, "the name resolved to no address"));
        }
        if !listed {
            for a in &addrs {
                if let Some(range) = refused_range(a.ip()) {
                    return Err(FetchError::new(
                        url,
                        format!(
                            "resolves to {} ({range}), not on IMAGE_SERVER_ALLOWLIST",
                            a.ip()
                        ),
                    ));
                }
            }
        }
        Ok(addrs)
    }

    /// A client for `base`'s origin only: its host pinned to the checked
    /// addresses, redirects kept to the same origin.
    pub async fn client_for(&self, base: &Url) -> Result<OriginClient, FetchError> {
        let addrs = self.check(base).await?;
        let origin = base.origin();
        let same = origin.clone();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("lxgate/", env!("CARGO_PKG_VERSION")))
            // A proxy would do its own DNS, and reach what we refused.
            .no_proxy()
            .redirect(redirect::Policy::custom(move |attempt| {
                // Same scheme, host and port: the pinned addresses still
                // apply, so the target is as checked as the first URL.
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if attempt.url().origin() == same {
                    attempt.follow()
                } else {
                    attempt.error("redirect to another origin")
                }
            }));
        if let Some(url::Host::Domain(name)) = base.host() {
            builder = builder.resolve_to_addrs(name, &addrs);
        }
        let client = builder
            .build()
            .map_err(|e| FetchError::new(base, format!("building the client: {e}")))?;
        Ok(OriginClient { client, origin })
    }
}

/// A client bound to one checked origin.
#[derive(Debug, Clone)]
pub struct OriginClient {
    client: reqwest::Client,
    origin: url::Origin,
}

impl OriginClient {
    /// GET `url` (on this origin), answering only a success status.
    pub async fn get(&self, url: &Url) -> Result<reqwest::Response, FetchError> {
        if url.origin() != self.origin {
            return Err(FetchError::new(url, "another origin than the server's"));
        }
        let resp = self.client.get(url.clone()).send().await.map_err(|e| {
            // Walk the chain: reqwest's own text stops at "error sending request".
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why = format!("{why}: {s}");
                src = s.source();
            }
            FetchError::new(url, why)
        })?;
        if !resp.status().is_success() {
            let mut e = FetchError::new(url, format!("answered {}", resp.status()));
            e.status = Some(resp.status());
            return Err(e);
        }
        Ok(resp)
    }

    /// GET `url` into memory, refusing a body over `max` bytes as it streams
    /// (a declared length over it is refused before reading).
    pub async fn get_bounded(&self, url: &Url, max: usize) -> Result<Vec<u8>, TooLarge> {
        let mut resp = self.get(url).await.map_err(TooLarge::Fetch)?;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(TooLarge::Over(max));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| TooLarge::Fetch(FetchError::new(url, e.to_string())))?
        {
            if body.len() + chunk.len() > max {
                return Err(TooLarge::Over(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// `get_bounded`'s failure: the fetch failed, or the body was over the cap.
#[derive(Debug)]
pub enum TooLarge {
    Fetch(FetchError),
    Over(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_ranges() {
        for bad in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
        ] {
            assert!(refused_range(ip(bad)).is_some(), "{bad}");
        }
        for good in [
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "100.63.255.255",
        ] {
            assert_eq!(refused_range(ip(good)), None, "{good}");
        }
    }

    #[test]
    fn ipv6_ranges_and_embedded_ipv4() {
        for bad in [
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(refused_range(ip(bad)).is_some(), "{bad}");
        }
        for good in ["2001:4860:4860::8888", "::ffff:1.1.1.1", "64:ff9b::101:101"] {
            assert_eq!(refused_range(ip(good)), None, "{good}");
        }
    }

    #[test]
    fn allowlist_entries() {
        let a: Allowlist = " 127.0.0.1:8443, images.Internal ,[::1]:80,[fd00::1]"
            .parse()
            .unwrap();
        assert!(a.allows("127.0.0.1", 8443));
        assert!(!a.allows("127.0.0.1", 8444));
        assert!(a.allows("images.internal", 1));
        assert!(a.allows("[::1]", 80));
        assert!(!a.allows("[::1]", 443));
        assert!(a.allows("[fd00::1]", 443));
        assert!("".parse::<Allowlist>().unwrap().is_empty());
        for bad in ["http://x", "x:y", "a/b", "x:99999", "::1", "u@h"] {
            assert!(bad.parse::<Allowlist>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn checks_before_connecting() {
        let f = Fetcher::new("127.0.0.1:9".parse().unwrap());
        let check = |s: &str| {
            let f = f.clone();
            let u = Url::parse(s).unwrap();
            async move { f.check(&u).await }
        };
        let e = check("http://169.254.169.254/").await.unwrap_err();
        assert_eq!(e.to_string(), "could not fetch http://169.254.169.254/");
        assert!(check("https://169.254.169.254/").await.is_err());
        assert!(check("https://[::ffff:127.0.0.1]/").await.is_err());
        assert!(check("https://127.0.0.1:10/").await.is_err());
        assert!(check("http://127.0.0.1:9/").await.is_ok());
        assert!(check("https://localhost/").await.is_err());
        assert!(check("https://1.1.1.1/").await.is_ok());
    }
}
