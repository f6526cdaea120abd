//! Roles, permissions and the checks handlers run (DESIGN §4).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Roles are ordered: a higher role can do everything a lower one can.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer = 1,
    Operator = 2,
    Admin = 3,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}; expected viewer, operator or admin"
            )),
        }
    }
}

/// Whether a permission is checked inside one project or across the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Project,
    Global,
}

/// Everything a handler can ask for. Each maps to the least role that grants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read anything inside a project.
    ProjectView,
    /// Create, change, delete and operate instances, snapshots, backups,
    /// volumes and NICs inside a project; cancel one's own operations.
    ProjectOperate,
    /// Storage pools, networks, projects: create / update / delete.
    InfraManage,
    /// Image copy, import, delete and aliases.
    ImageManage,
    /// Users and role grants.
    UserManage,
    /// Cancel anybody's operation.
    OperationCancelAny,
    /// Subscribe to `logging` events.
    LoggingEvents,
    /// Read the audit log.
    AuditRead,
    /// List across every project at once (`all-projects=true`).
    AllProjectsView,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ProjectView => "project:view",
            Permission::ProjectOperate => "project:operate",
            Permission::InfraManage => "infrastructure:manage",
            Permission::ImageManage => "images:manage",
            Permission::UserManage => "users:manage",
            Permission::OperationCancelAny => "operations:cancel-any",
            Permission::LoggingEvents => "events:logging",
            Permission::AuditRead => "audit:read",
            Permission::AllProjectsView => "projects:view-all",
        }
    }

    pub fn min_role(self) -> Role {
        match self {
            Permission::ProjectView => Role::Viewer,
            Permission::ProjectOperate => Role::Operator,
            _ => Role::Admin,
        }
    }

    /// Whether the permission changes something (refused to read-only
    /// personal access tokens, even on GET routes such as exec sockets).
    pub fn writes(self) -> bool {
        matches!(
            self,
            Permission::ProjectOperate
                | Permission::InfraManage
                | Permission::ImageManage
                | Permission::UserManage
                | Permission::OperationCancelAny
        )
    }

    pub fn scope(self) -> Scope {
        match self {
            Permission::ProjectView | Permission::ProjectOperate => Scope::Project,
            _ => Scope::Global,
        }
    }

    /// The permission of this name (`project:operate`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub const ALL: [Permission; 9] = [
        Permission::ProjectView,
        Permission::ProjectOperate,
        Permission::InfraManage,
        Permission::ImageManage,
        Permission::UserManage,
        Permission::OperationCancelAny,
        Permission::LoggingEvents,
        Permission::AuditRead,
        Permission::AllProjectsView,
    ];
}

impl Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|p| p.as_str()).collect();
            serde::de::Error::custom(format!(
                "unknown permission {s:?}; expected one of {}",
                names.join(", ")
            ))
        })
    }
}

impl utoipa::PartialSchema for Permission {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .description(Some(
                "A permission (what the 403 `permission` field names): project-scoped `project:view` (viewer) and `project:operate` (operator), server-wide the rest (admin)",
            ))
            .enum_values(Some(Self::ALL.iter().map(|p| p.as_str())))
            .into()
    }
}

impl ToSchema for Permission {}

/// A user's roles: the global one and per-project grants (for a personal
/// access token: its owner's, capped by the token).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub global: Option<Role>,
    pub projects: Vec<(String, Role)>,
    /// Every permission that [writes](Permission::writes) is refused.
    pub read_only: bool,
}

/// The personal access token a caller authenticated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatRef {
    pub id: String,
    pub caps: TokenCaps,
}

/// What a personal access token keeps of its owner's rights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenCaps {
    /// Only these projects (no global role at all); `None`: all the owner's.
    pub projects: Option<Vec<String>>,
    /// No role above this one, globally or in a project.
    pub role_cap: Option<Role>,
    pub read_only: bool,
}

impl Grants {
    /// Adds a role in `project`, keeping the higher one when the project
    /// has one already (a user's own grant and its teams').
    pub fn grant(&mut self, project: String, role: Role) {
        match self.projects.iter_mut().find(|(p, _)| *p == project) {
            Some((_, r)) => *r = (*r).max(role),
            None => self.projects.push((project, role)),
        }
    }

    /// The effective role in `project`: the higher of the global role and the project grant.
    pub fn role_in(&self, project: &str) -> Option<Role> {
        let local = self
            .projects
            .iter()
            .find(|(p, _)| p == project)
            .map(|(_, r)| *r);
        self.global.max(local)
    }

    pub fn allows(&self, permission: Permission, project: &str) -> bool {
        if self.read_only && permission.writes() {
            return false;
        }
        let role = match permission.scope() {
            Scope::Project => self.role_in(project),
            Scope::Global => self.global,
        };
        role.is_some_and(|r| r >= permission.min_role())
    }

    /// Whether the user can see `project` at all.
    pub fn can_see(&self, project: &str) -> bool {
        self.allows(Permission::ProjectView, project)
    }

    /// These grants as a token with `caps` holds them: never more than
    /// the owner's. Limited to projects, the token has no global role, and
    /// in each listed project the owner's effective role there.
    pub fn capped(&self, caps: &TokenCaps) -> Grants {
        let cap = |r: Role| caps.role_cap.map_or(r, |c| r.min(c));
        let (global, projects) = match &caps.projects {
            None => (
                self.global.map(cap),
                self.projects
                    .iter()
                    .map(|(p, r)| (p.clone(), cap(*r)))
                    .collect(),
            ),
            Some(listed) => (
                None,
                listed
                    .iter()
                    .filter_map(|p| Some((p.clone(), cap(self.role_in(p)?))))
                    .collect(),
            ),
        };
        Grants {
            global,
            projects,
            read_only: self.read_only || caps.read_only,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn grants_from_several_sources_keep_the_highest_role() {
        let mut g = Grants::default();
        g.grant("a".into(), Role::Operator);
        g.grant("a".into(), Role::Viewer);
        g.grant("b".into(), Role::Viewer);
        g.grant("b".into(), Role::Admin);
        assert_eq!(g.role_in("a"), Some(Role::Operator));
        assert_eq!(g.role_in("b"), Some(Role::Admin));
        assert_eq!(g.projects.len(), 2);
    }

    #[test]
    fn effective_role_is_the_higher_of_global_and_project() {
        let g = Grants {
            global: Some(Role::Viewer),
            projects: vec![("team-a".into(), Role::Operator)],
            ..Grants::default()
        };
        assert_eq!(g.role_in("team-a"), Some(Role::Operator));
        assert_eq!(g.role_in("default"), Some(Role::Viewer));
        assert!(g.allows(Permission::ProjectOperate, "team-a"));
        assert!(!g.allows(Permission::ProjectOperate, "default"));
        // A project grant never confers global permissions.
        let p = Grants {
            global: None,
            projects: vec![("team-a".into(), Role::Admin)],
            ..Grants::default()
        };
        assert!(!p.allows(Permission::UserManage, "team-a"));
        assert!(p.allows(Permission::ProjectOperate, "team-a"));
        assert!(!p.can_see("default"));
    }

    #[test]
    fn admin_has_every_permission() {
        let a = Grants {
            global: Some(Role::Admin),
            ..Grants::default()
        };
        for p in Permission::ALL {
            assert!(a.allows(p, "anything"), "{p:?}");
        }
        let none = Grants::default();
        for p in Permission::ALL {
            assert!(!none.allows(p, "default"), "{p:?}");
        }
    }

    fn admin() -> Grants {
        Grants {
            global: Some(Role::Admin),
            projects: vec![("team-a".into(), Role::Viewer)],
            ..Grants::default()
        }
    }

    #[test]
    fn no_caps_change_nothing() {
        assert_eq!(admin().capped(&TokenCaps::default()), admin());
    }

    #[test]
    fn a_role_cap_lowers_every_role() {
        let g = admin().capped(&TokenCaps {
            role_cap: Some(Role::Viewer),
            ..TokenCaps::default()
        });
        assert_eq!(g.global, Some(Role::Viewer));
        assert_eq!(g.projects, vec![("team-a".to_owned(), Role::Viewer)]);
        assert!(g.can_see("anything"));
        for p in Permission::ALL
            .into_iter()
            .filter(|p| *p != Permission::ProjectView)
        {
            assert!(!g.allows(p, "default"), "{p:?}");
        }
        // A cap above the role is no raise.
        let op = Grants {
            global: Some(Role::Operator),
            ..Grants::default()
        };
        let g = op.capped(&TokenCaps {
            role_cap: Some(Role::Admin),
            ..TokenCaps::default()
        });
        assert_eq!(g.global, Some(Role::Operator));
        assert!(!g.allows(Permission::UserManage, ""));
    }

    #[test]
    fn a_project_list_drops_the_global_role() {
        let caps = TokenCaps {
            projects: Some(vec!["team-a".into(), "team-b".into()]),
            role_cap: Some(Role::Operator),
            ..TokenCaps::default()
        };
        let g = admin().capped(&caps);
        assert_eq!(g.global, None);
        // The owner's effective role in each (global admin), capped.
        assert_eq!(
            g.projects,
            vec![
                ("team-a".to_owned(), Role::Operator),
                ("team-b".to_owned(), Role::Operator)
            ]
        );
        assert!(g.allows(Permission::ProjectOperate, "team-b"));
        assert!(!g.can_see("default"));
        for p in Permission::ALL
            .into_iter()
            .filter(|p| p.scope() == Scope::Global)
        {
            assert!(!g.allows(p, "team-a"), "{p:?}");
        }
        // A listed project the owner holds no role in stays out.
        let teamop = Grants {
            global: None,
            projects: vec![("team-a".into(), Role::Viewer)],
            ..Grants::default()
        };
        let g = teamop.capped(&caps);
        assert_eq!(g.projects, vec![("team-a".to_owned(), Role::Viewer)]);
        assert!(!g.can_see("team-b"));
    }

    #[test]
    fn read_only_refuses_every_write_permission() {
        let g = admin().capped(&TokenCaps {
            read_only: true,
            ..TokenCaps::default()
        });
        assert_eq!(g.global, Some(Role::Admin));
        for p in Permission::ALL {
            assert_eq!(g.allows(p, "default"), !p.writes(), "{p:?}");
        }
        assert!(g.can_see("team-a"));
    }
}
