//! Authentication and authorization: who the caller is and what it may do.

pub mod accounts;
pub mod explain;
pub mod extract;
pub mod limit;
pub mod oidc;
pub mod password;
pub mod rbac;
pub mod tokens;
pub mod view;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use extract::AuthUser;
pub use rbac::{Permission, Role};

/// A validated username: 1-64 ASCII letters, digits, `.`, `_`, `-` or `@`,
/// starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

impl Username {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("a username cannot be empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!(
                "a username is at most {} characters (got {})",
                Self::MAX_LEN,
                s.chars().count()
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
        {
            return Err(if c.is_control() {
                "a username cannot contain control characters".into()
            } else {
                format!(
                    "a username cannot contain {c:?}; use letters, digits, '.', '_', '-' or '@'"
                )
            });
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err("a username must start with a letter or digit".into());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Username {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Username> for String {
    fn from(u: Username) -> Self {
        u.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_validated() {
        assert!(Username::parse("alice").is_ok());
        assert!(Username::parse("ops.team-1@example.org").is_ok());
        assert!(Username::parse("").is_err());
        assert!(Username::parse(&"a".repeat(65)).is_err());
        assert!(Username::parse(&"a".repeat(64)).is_ok());
        assert!(
            Username::parse("bob\u{0007}")
                .unwrap_err()
                .contains("control")
        );
        assert!(Username::parse("-bob").is_err());
        assert!(Username::parse("bob/../x").is_err());
        assert!(Username::parse("b ob").is_err());
    }
}
