//! Conditional GETs: every JSON answer to a `GET` carries an `ETag`, and
//! `If-None-Match` with the current one gets `304 Not Modified` and no body.
//!
//! The tag is computed from the bytes the caller would receive, so it
//! changes whenever anything in them does (a status, a `used_by` entry, a
//! list member) and differs between callers who see different things. A
//! resource that has a backend version (Incus's ETag: a hash over what PUT
//! replaces) keeps it in front, `"<version>.<digest>"`, and `If-Match`
//! compares only that part, as Incus does: a start or a stop in between
//! does not fail an edit of the config (see `version_of`).

use axum::body::{Body, HttpBody as _};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

/// Hex digits of the digest part: 96 bits, plenty against accidental equality.
const DIGEST_HEX: usize = 24;

/// Answers larger than this pass without a tag rather than being hashed.
const MAX_TAGGED_BYTES: u64 = 32 * 1024 * 1024;

pub async fn layer(req: Request, next: Next) -> Response {
    // The API's answers only (`/health` and the like are not versioned).
    if !matches!(*req.method(), Method::GET | Method::HEAD)
        || !req.uri().path().starts_with("/api/")
    {
        return next.run(req).await;
    }
    let if_none_match = req.headers().get(header::IF_NONE_MATCH).cloned();
    // The compression layer outside picks the encoding from this header: a
    // tag is strong only if it names one encoding of one body.
    let encoding = req.headers().get(header::ACCEPT_ENCODING).cloned();
    let resp = next.run(req).await;
    if resp.status() != StatusCode::OK || !is_json(resp.headers()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    if body
        .size_hint()
        .upper()
        .is_none_or(|n| n > MAX_TAGGED_BYTES)
    {
        return Response::from_parts(parts, body);
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_TAGGED_BYTES as usize).await else {
        // Only a body that fails to produce itself gets here.
        return Response::from_parts(parts, Body::empty());
    };
    let version = parts
        .headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned());
    let digest = digest(encoding.as_ref().map(HeaderValue::as_bytes), &bytes);
    let tag = match version {
        Some(v) if !v.is_empty() => format!("\"{v}.{digest}\""),
        _ => format!("\"{digest}\""),
    };
    match HeaderValue::from_str(&tag) {
        Ok(v) => parts.headers.insert(header::ETAG, v),
        // A backend version that cannot be a header: no tag at all.
        Err(_) => parts.headers.remove(header::ETAG),
    };
    // Browsers keep the body but ask each time (with If-None-Match); shared
    // caches keep nothing, the answer depends on who asks.
    parts
        .headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("private, no-cache"));
    if if_none_match
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches_any(v, &tag))
    {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(header::CONTENT_TYPE);
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::empty());
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn digest(encoding: Option<&[u8]>, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(encoding.unwrap_or_default());
    // Nothing in a header value is a NUL: the two parts cannot run together.
    h.update([0]);
    h.update(body);
    let mut out = hex::encode(h.finalize());
    out.truncate(DIGEST_HEX);
    out
}

/// `If-None-Match`'s weak comparison: `*`, or any listed tag with the same
/// opaque part, `W/` or not.
fn matches_any(header: &str, tag: &str) -> bool {
    let header = header.trim();
    header == "*"
        || header
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == tag)
}

/// What `If-Match` is compared with: the version part of a tag this layer
/// made (`"<version>.<digest>"` -> `<version>`), or the tag as sent (a
/// version from elsewhere, `*`, a list, a weak tag: `If-Match` compares
/// strongly, so a weak one matches nothing).
pub fn version_of(if_match: &str) -> String {
    let t = if_match.trim();
    let Some(inner) = t
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .filter(|s| !s.contains('"'))
    else {
        return t.to_owned();
    };
    match inner.rsplit_once('.') {
        Some((v, d)) if is_digest(d) && !v.is_empty() => v.to_owned(),
        _ => inner.to_owned(),
    }
}

fn is_digest(s: &str) -> bool {
    s.len() == DIGEST_HEX && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_keeps_only_the_version() {
        let d = "0123456789abcdef01234567";
        assert_eq!(version_of(&format!("\"abc.{d}\"")), "abc");
        let weak = format!("W/\"abc.{d}\"");
        assert_eq!(
            version_of(&weak),
            weak,
            "passed on as it is, to match nothing"
        );
        // A tag without a version part (a list's) stays what it is: it
        // matches no backend version.
        assert_eq!(version_of(&format!("\"{d}\"")), d);
        // Raw backend versions and the rest pass through.
        assert_eq!(version_of("\"abc\""), "abc");
        assert_eq!(version_of("abc"), "abc");
        assert_eq!(version_of("*"), "*");
        assert_eq!(version_of("\"a.b\""), "a.b");
        assert_eq!(version_of("\"a\", \"b\""), "\"a\", \"b\"");
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let tag = "\"v.0123456789abcdef01234567\"";
        assert!(matches_any(tag, tag));
        assert!(matches_any(&format!("W/{tag}"), tag));
        assert!(matches_any(&format!("\"x\", {tag}"), tag));
        assert!(matches_any("*", tag));
        assert!(!matches_any("\"v\"", tag));
        assert!(!matches_any("", tag));
    }

    #[test]
    fn the_digest_names_the_encoding_and_the_body() {
        let plain = digest(None, b"{}");
        assert_eq!(plain.len(), DIGEST_HEX);
        assert_ne!(plain, digest(Some(b"gzip"), b"{}"));
        assert_ne!(plain, digest(None, b"{ }"));
        assert_eq!(plain, digest(None, b"{}"));
    }
}
