//! Remote image servers as a request names them (`POST images` copies and
//! instance creates from `source.server`): the URL's shape, the fetch rules
//! (`crate::fetch`) applied before any backend hears of the server, and the
//! alias on the server. Shared by the image and instance handlers.

use crate::error::{ApiError, ApiResult};
use crate::fetch::Fetcher;

/// `simplestreams` or `incus` (field `field`).
pub fn check_protocol(protocol: &str, field: &str) -> ApiResult<()> {
    if matches!(protocol, "simplestreams" | "incus") {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            format!("{field} must be `simplestreams` or `incus`"),
        ))
    }
}

/// Where a copy may come from: any `https://` server, or plain `http://`
/// to 127.0.0.1 only (a local test server; nothing else travels unencrypted).
fn check_server_url(server: &str, fetch: &Fetcher) -> ApiResult<reqwest::Url> {
    let bad = |msg: &str| Err(ApiError::invalid_field("source.server", msg));
    if server.len() > 2048 {
        return bad("source.server is longer than 2048 characters");
    }
    // The schema's pattern, so that what it takes and what is taken agree.
    static SHAPE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(crate::api::schemas::IMAGE_SERVER_PATTERN).expect("a valid pattern")
    });
    if !SHAPE.is_match(server) {
        return bad(
            "source.server must be an https:// URL with a host name or an IP address, an optional port and path, and no credentials, query or fragment",
        );
    }
    let Ok(url) = reqwest::Url::parse(server) else {
        return bad("source.server must be an absolute https:// URL");
    };
    if !url.username().is_empty() || url.password().is_some() {
        return bad("source.server must not carry credentials");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return bad("source.server must not have a query or fragment");
    }
    if let Err(why) = fetch.check_scheme(&url) {
        return bad(&format!("source.server {why}"));
    }
    Ok(url)
}

/// The server an image is copied from, checked under `fetch`'s rules at
/// request time for both backends: the embedded one checks again (and pins
/// the addresses) when it connects; Incus, which fetches by itself, is not
/// told to fetch from a name that resolves where lxgate would refuse (it
/// resolves the name again, so a changed DNS answer reaches it: see
/// `sources::vouched_for` for who may send it where). A badly formed
/// URL is a 422 naming the field; a refused or unresolvable host a 400 that
/// says only "could not fetch".
pub async fn check_server(server: &str, fetch: &Fetcher) -> ApiResult<()> {
    let url = check_server_url(server, fetch)?;
    fetch
        .check(&url)
        .await
        .map_err(|e| ApiError::bad_request("could_not_fetch", e.to_string()))?;
    Ok(())
}

/// A remote alias (`debian/12`): travels in a JSON body, so only length and
/// printable characters matter.
pub fn check_remote_alias(alias: &str) -> ApiResult<()> {
    if alias.is_empty()
        || alias.chars().count() > 255
        || alias.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::invalid_field(
            "source.alias",
            "source.alias must be 1-255 characters without whitespace or control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn copy_server_urls() {
        let fetch = Fetcher::new("127.0.0.1:8000".parse().unwrap());
        for ok in [
            "https://images.linuxcontainers.org",
            "https://127.0.0.1:8443",
            "http://127.0.0.1:8000/",
        ] {
            assert!(check_server_url(ok, &fetch).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com",
            "http://10.0.0.1",
            "http://localhost:80",
            "http://127.0.0.1:8001",
            "http://127.0.0.2",
            "ftp://example.com",
            "https://user:pw@example.com",
            "images.linuxcontainers.org",
            "",
            "file:///etc/passwd",
        ] {
            assert!(check_server_url(bad, &fetch).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn copy_servers_on_refused_addresses() {
        let fetch = Fetcher::new("127.0.0.1:8000".parse().unwrap());
        assert!(check_server("http://127.0.0.1:8000/", &fetch).await.is_ok());
        for bad in [
            "https://169.254.169.254/",
            "https://127.0.0.1:8443",
            "https://[::1]/",
            "https://10.1.2.3/",
            "https://[::ffff:192.168.0.1]/",
        ] {
            let e = check_server(bad, &fetch).await.unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
