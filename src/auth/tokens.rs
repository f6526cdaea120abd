//! Access tokens (HS256 JWT), opaque refresh tokens and WebSocket tickets.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::Role;

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// The username, for display and logs.
    pub name: String,
    /// The global role when the token was issued (informational: the database decides).
    pub role: Option<Role>,
    /// Token version: must equal the user's current version.
    pub tv: i64,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
}

/// Why a token was refused; logged at debug level, never detailed to clients.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenRejected(String);

/// Clock skew tolerated on `exp` and `nbf`: a token verifies up to this
/// long after its `exp`.
pub const LEEWAY_SECS: u64 = 5;

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    pub access_ttl: Duration,
    /// Tokens this server verified, by their exact text, with their claims.
    /// Verifying (base64, an HMAC, two JSON parses) is most of what an
    /// authenticated request costs; the same bytes verify the same way
    /// under the same key, so a hit only checks the times again.
    verified: moka::sync::Cache<String, Arc<Claims>>,
}

impl TokenKeys {
    pub fn new(secret: &[u8], issuer: &str, audience: &str, access_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub", "iss", "aud"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            access_ttl,
            verified: moka::sync::Cache::builder()
                .max_capacity(20_000)
                .time_to_live(access_ttl + Duration::from_secs(LEEWAY_SECS))
                .build(),
        }
    }

    pub fn issue(
        &self,
        user_id: &str,
        username: &str,
        role: Option<Role>,
        token_version: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = now_secs();
        let claims = Claims {
            sub: user_id.to_owned(),
            name: username.to_owned(),
            role,
            tv: token_version,
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            nbf: now,
            exp: now + self.access_ttl.as_secs() as i64,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Signature, algorithm (HS256 only, so `alg: none` is refused), expiry,
    /// not-before, issuer and audience are all checked here.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, TokenRejected> {
        if let Some(claims) = self.verified.get(token) {
            // As jsonwebtoken checks them, with the same leeway.
            let now = now_secs();
            let leeway = LEEWAY_SECS as i64;
            if claims.exp < now - leeway {
                return Err(TokenRejected("ExpiredSignature".into()));
            }
            if claims.nbf > now + leeway {
                return Err(TokenRejected("ImmatureSignature".into()));
            }
            return Ok(claims);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| Arc::new(data.claims))
            .map_err(|e| TokenRejected(e.to_string()))?;
        self.verified.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    /// For tests of expiry and tampering: sign arbitrary claims with this key.
    pub fn sign_claims(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing does not fail")
    }
}

/// A new opaque secret (256 bits, base64url), used for refresh tokens and WS tickets.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// How opaque secrets are stored: SHA-256, hex. They carry 256 bits of
/// entropy, so a fast hash is enough and lookups stay indexed.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(
            b"0123456789abcdef0123456789abcdef",
            "lxgate",
            "lxgate-api",
            Duration::from_secs(60),
        )
    }

    #[test]
    fn round_trip() {
        let k = keys();
        let t = k.issue("id-1", "alice", Some(Role::Admin), 3).unwrap();
        let c = k.verify(&t).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.tv, c.role),
            ("id-1", 3, Some(Role::Admin))
        );
    }

    /// A token verified once (and kept) still expires on time.
    #[test]
    fn a_kept_token_still_expires() {
        let k = keys();
        let leeway = LEEWAY_SECS as i64;
        // Valid for what is left of this second, then expired; when the
        // second turns before the first check, again (a few times at most).
        let t = (0..3)
            .find_map(|_| {
                let now = now_secs();
                let t = k.sign_claims(&Claims {
                    sub: "id".into(),
                    name: "a".into(),
                    role: None,
                    tv: 0,
                    jti: "j".into(),
                    iat: now - 100,
                    nbf: now - 100,
                    exp: now - leeway,
                    iss: "lxgate".into(),
                    aud: "lxgate-api".into(),
                });
                k.verify(&t).is_ok().then_some(t)
            })
            .expect("a token valid for the rest of a second");
        assert!(k.verified.get(&t).is_some(), "kept after verifying");
        std::thread::sleep(Duration::from_millis(1100));
        let e = k.verify(&t).unwrap_err();
        assert_eq!(e.to_string(), "ExpiredSignature");
    }

    #[test]
    fn wrong_audience_key_or_alg_none_are_refused() {
        let k = keys();
        let other_aud = TokenKeys::new(
            b"0123456789abcdef0123456789abcdef",
            "lxgate",
            "someone-else",
            Duration::from_secs(60),
        );
        let t = other_aud.issue("id", "a", None, 0).unwrap();
        assert!(k.verify(&t).is_err());
        let other_key = TokenKeys::new(
            b"ffffffffffffffffffffffffffffffff",
            "lxgate",
            "lxgate-api",
            Duration::from_secs(60),
        );
        assert!(
            k.verify(&other_key.issue("id", "a", None, 0).unwrap())
                .is_err()
        );
        // alg: none with the same claims.
        let t = k.issue("id", "a", None, 0).unwrap();
        let payload = t.split('.').nth(1).unwrap();
        let none = format!(
            "{}.{payload}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
        );
        assert!(k.verify(&none).is_err());
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let a = random_token();
        assert_ne!(a, random_token());
        assert_eq!(a.len(), 43);
        assert_eq!(hash_token(&a).len(), 64);
    }
}
