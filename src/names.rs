//! Validated names for everything that reaches a backend or the database.
//!
//! Incus rules (DESIGN §6): 1-63 characters, ASCII letters, digits and
//! hyphens, not starting with a digit or hyphen, not ending with a hyphen.
//! A handler cannot call a backend with an unchecked string.

use std::fmt;

use serde::{Deserialize, Serialize};

pub fn check_resource_name(kind: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!(
            "{kind} name must be 1-63 characters (got {})",
            s.chars().count()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "{kind} name {s:?} contains {c:?}; only letters, digits and '-' are allowed"
        ));
    }
    if s.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        return Err(format!(
            "{kind} name {s:?} must not start with a digit or '-'"
        ));
    }
    if s.ends_with('-') {
        return Err(format!("{kind} name {s:?} must not end with '-'"));
    }
    Ok(())
}

macro_rules! resource_name {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, String> {
                check_resource_name($kind, s).map(|()| Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

resource_name!(
    /// A project name (`default` is the project every server has).
    ProjectName,
    "project"
);

resource_name!(
    /// An instance name (containers and virtual machines).
    InstanceName,
    "instance"
);

impl Default for ProjectName {
    fn default() -> Self {
        Self("default".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incus_name_rules() {
        for ok in ["default", "a", "team-a", "A1-b2", &"x".repeat(63)] {
            assert!(ProjectName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "-abc",
            "abc-",
            "a_b",
            "a.b",
            "../etc",
            "a/b",
            "a b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(ProjectName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
