-- A count of the changes to what authenticates a request: accounts (role,
-- status, password, token version), project grants, teams and their grants,
-- logged-out access tokens. Triggers keep it and notify `lxgate_auth`, so
-- every writer (any replica, the `lxgate` shell commands) reaches every
-- replica's in-memory view of its callers at once (src/auth/view.rs); the
-- count is what a replica checks when it may have missed a notification.
-- A sequence rather than a row: it takes no lock, so concurrent changes to
-- different accounts never wait on (or deadlock over) one shared row.
CREATE SEQUENCE auth_epoch;

-- `SET search_path FROM CURRENT`: the sequence is found whatever the
-- writer's own search_path.
CREATE FUNCTION lxgate_auth_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM nextval('auth_epoch');
    PERFORM pg_notify('lxgate_auth', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER auth_epoch AFTER UPDATE OF username, role, disabled, token_version, password_hash OR DELETE OR TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION lxgate_auth_changed();
CREATE TRIGGER auth_epoch AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON project_roles
    FOR EACH STATEMENT EXECUTE FUNCTION lxgate_auth_changed();
CREATE TRIGGER auth_epoch AFTER DELETE OR TRUNCATE ON teams
    FOR EACH STATEMENT EXECUTE FUNCTION lxgate_auth_changed();
CREATE TRIGGER auth_epoch AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON team_members
    FOR EACH STATEMENT EXECUTE FUNCTION lxgate_auth_changed();
CREATE TRIGGER auth_epoch AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON team_roles
    FOR EACH STATEMENT EXECUTE FUNCTION lxgate_auth_changed();
CREATE TRIGGER auth_epoch AFTER INSERT OR TRUNCATE ON revoked_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION lxgate_auth_changed();
