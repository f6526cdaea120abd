-- Users of the single sign-on provider: its subject (`sub`), unique. Their
-- global role, project grants and the memberships of teams OIDC_ROLE_MAP
-- names follow the provider's groups claim; they have no password.
ALTER TABLE users ADD COLUMN oidc_subject TEXT NULL;
CREATE UNIQUE INDEX users_oidc_subject ON users (oidc_subject);
