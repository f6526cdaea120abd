-- A count of the changes to what authenticates a request: accounts (role,
-- status, password, token version), project grants, teams and their grants,
-- logged-out access tokens. Triggers keep it, so every writer moves it, the
-- `lxgate` shell commands in another process included; each server watches it
-- to drop its in-memory view of its callers (src/auth/view.rs).
CREATE TABLE auth_epoch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO auth_epoch (id, n) VALUES (1, 0);

CREATE TRIGGER auth_epoch_users_update AFTER UPDATE OF username, role, disabled, token_version, password_hash ON users
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER auth_epoch_users_delete AFTER DELETE ON users
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;

CREATE TRIGGER auth_epoch_project_roles_insert AFTER INSERT ON project_roles
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER auth_epoch_project_roles_update AFTER UPDATE ON project_roles
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER auth_epoch_project_roles_delete AFTER DELETE ON project_roles
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;

CREATE TRIGGER auth_epoch_teams_delete AFTER DELETE ON teams
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;

CREATE TRIGGER auth_epoch_team_members_insert AFTER INSERT ON team_members
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER auth_epoch_team_members_update AFTER UPDATE ON team_members
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER auth_epoch_team_members_delete AFTER DELETE ON team_members
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;

CREATE TRIGGER auth_epoch_team_roles_insert AFTER INSERT ON team_roles
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER auth_epoch_team_roles_update AFTER UPDATE ON team_roles
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER auth_epoch_team_roles_delete AFTER DELETE ON team_roles
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;

CREATE TRIGGER auth_epoch_revoked_tokens_insert AFTER INSERT ON revoked_tokens
BEGIN UPDATE auth_epoch SET n = n + 1 WHERE id = 1; END;
