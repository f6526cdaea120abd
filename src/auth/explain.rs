//! Why a caller may or may not do something: the roles that reach it (its
//! global role, its own project grants, its teams' grants) and what a
//! personal access token keeps of them. Pure: the callers read the rows.

use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::rbac::{Grants, Permission, Role, Scope, TokenCaps};

/// Where a role comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum Origin {
    /// The user's global role (it applies in every project).
    Global { role: Role },
    /// The user's own grant in the project.
    User { role: Role },
    /// A grant of a team the user is in.
    Team {
        #[schema(value_type = crate::names::TeamName)]
        team: String,
        role: Role,
    },
}

impl Origin {
    pub fn role(&self) -> Role {
        match self {
            Origin::Global { role } | Origin::User { role } | Origin::Team { role, .. } => *role,
        }
    }

    fn describe(&self) -> String {
        match self {
            Origin::Global { role } => format!("global {role}"),
            Origin::User { role } => format!("own grant {role}"),
            Origin::Team { team, role } => format!("team `{team}` {role}"),
        }
    }
}

/// Every role that reaches a user, before any token cap.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    pub global: Option<Role>,
    /// (project, role) of the user's own grants.
    pub own: Vec<(String, Role)>,
    /// (team, project, role) of its teams' grants.
    pub teams: Vec<(String, String, Role)>,
}

impl Roles {
    /// What reaches `project` (`None`: server-wide, the global role only).
    pub fn origins(&self, project: Option<&str>) -> Vec<Origin> {
        let mut out: Vec<Origin> = self
            .global
            .map(|role| Origin::Global { role })
            .into_iter()
            .collect();
        if let Some(project) = project {
            out.extend(
                self.own
                    .iter()
                    .filter(|(p, _)| p == project)
                    .map(|(_, role)| Origin::User { role: *role }),
            );
            out.extend(self.teams.iter().filter(|(_, p, _)| p == project).map(
                |(team, _, role)| Origin::Team {
                    team: team.clone(),
                    role: *role,
                },
            ));
        }
        out
    }

    /// The projects some grant names, in order.
    pub fn projects(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .own
            .iter()
            .map(|(p, _)| p.clone())
            .chain(self.teams.iter().map(|(_, p, _)| p.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The grants these roles make (the highest per project).
    pub fn grants(&self) -> Grants {
        let mut g = Grants {
            global: self.global,
            ..Grants::default()
        };
        for (project, role) in &self.own {
            g.grant(project.clone(), *role);
        }
        for (_, project, role) in &self.teams {
            g.grant(project.clone(), *role);
        }
        g
    }
}

/// The answer to "may the caller do `permission` (in `project`)?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The caller's effective role where the permission is checked (after
    /// a token's caps).
    pub role: Option<Role>,
    pub required_role: Role,
    pub origins: Vec<Origin>,
    pub reason: String,
}

/// Judges `permission` in `project` (ignored for server-wide permissions)
/// for a user with `roles`, through a token with `caps` if there is one.
pub fn judge(
    permission: Permission,
    project: &str,
    roles: &Roles,
    caps: Option<&TokenCaps>,
) -> Verdict {
    let owner = roles.grants();
    let grants = caps.map_or_else(|| owner.clone(), |c| owner.capped(c));
    let (scope, at) = match permission.scope() {
        Scope::Project => (format!("in project `{project}`"), Some(project)),
        Scope::Global => ("server-wide".to_owned(), None),
    };
    let role_of = |g: &Grants| match at {
        Some(p) => g.role_in(p),
        None => g.global,
    };
    let (role, owner_role) = (role_of(&grants), role_of(&owner));
    let origins = roles.origins(at);
    let required_role = permission.min_role();
    let allowed = grants.allows(permission, project);
    let held = if origins.is_empty() {
        "no role".to_owned()
    } else {
        origins
            .iter()
            .map(Origin::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let needs = format!(
        "`{}` needs the {required_role} role {scope}",
        permission.as_str()
    );
    let reason = if allowed {
        format!(
            "allowed: {needs}; the caller is {} there ({held})",
            role.map_or("-", Role::as_str)
        )
    } else if grants.read_only && permission.writes() {
        format!("denied: {needs}, and this personal access token is read-only")
    } else if owner.allows(permission, project) {
        let why = match (caps, at) {
            (
                Some(TokenCaps {
                    projects: Some(listed),
                    ..
                }),
                Some(p),
            ) if !listed.iter().any(|l| l == p) => {
                format!("is not valid in project `{p}`")
            }
            (
                Some(TokenCaps {
                    projects: Some(_), ..
                }),
                None,
            ) => "is limited to projects, so it holds no server-wide role".to_owned(),
            _ => format!("is capped at {}", role.map_or("no role", Role::as_str)),
        };
        format!(
            "denied: {needs}; its owner is {} there ({held}), but this personal access token {why}",
            owner_role.map_or("-", Role::as_str)
        )
    } else {
        let grant = match at {
            Some(_) => "an admin can grant it (to the user, or to one of its teams)",
            None => "an admin can grant a global role",
        };
        match owner_role {
            Some(r) => format!("denied: {needs}; the caller is {r} there ({held}); {grant}"),
            None => format!("denied: {needs}; the caller has no role there; {grant}"),
        }
    };
    Verdict {
        allowed,
        role,
        required_role,
        origins,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> Roles {
        Roles {
            global: Some(Role::Viewer),
            own: vec![("a".into(), Role::Viewer)],
            teams: vec![
                ("web".into(), "a".into(), Role::Operator),
                ("ops".into(), "b".into(), Role::Admin),
            ],
        }
    }

    #[test]
    fn the_highest_origin_decides_and_every_origin_is_named() {
        let v = judge(Permission::ProjectOperate, "a", &roles(), None);
        assert!(v.allowed);
        assert_eq!(v.role, Some(Role::Operator));
        assert_eq!(v.origins.len(), 3);
        assert!(v.reason.contains("team `web` operator"), "{}", v.reason);
        let v = judge(Permission::ProjectOperate, "c", &roles(), None);
        assert!(!v.allowed);
        assert_eq!(v.role, Some(Role::Viewer));
        assert!(v.reason.contains("global viewer"), "{}", v.reason);
        // A project admin is no global admin.
        let v = judge(Permission::UserManage, "b", &roles(), None);
        assert!(!v.allowed);
        assert_eq!(v.origins, vec![Origin::Global { role: Role::Viewer }]);
    }

    #[test]
    fn a_token_names_the_cap_that_refused() {
        let capped = TokenCaps {
            role_cap: Some(Role::Viewer),
            ..TokenCaps::default()
        };
        let v = judge(Permission::ProjectOperate, "a", &roles(), Some(&capped));
        assert!(!v.allowed);
        assert!(v.reason.contains("capped at viewer"), "{}", v.reason);
        let listed = TokenCaps {
            projects: Some(vec!["b".into()]),
            ..TokenCaps::default()
        };
        let v = judge(Permission::ProjectOperate, "a", &roles(), Some(&listed));
        assert!(
            v.reason.contains("not valid in project `a`"),
            "{}",
            v.reason
        );
        let read_only = TokenCaps {
            read_only: true,
            ..TokenCaps::default()
        };
        let v = judge(Permission::ProjectOperate, "b", &roles(), Some(&read_only));
        assert!(v.reason.contains("read-only"), "{}", v.reason);
        assert!(judge(Permission::ProjectView, "b", &roles(), Some(&read_only)).allowed);
    }

    #[test]
    fn nobody_gets_a_hint_to_ask_for_a_role_they_have() {
        let none = Roles::default();
        let v = judge(Permission::ProjectView, "a", &none, None);
        assert!(!v.allowed);
        assert!(v.reason.contains("has no role"), "{}", v.reason);
        assert!(v.origins.is_empty());
    }
}
