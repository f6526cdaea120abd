-- A count of the changes to what authenticates a request: accounts (role,
-- status, password, token version), project grants, teams and their grants,
-- logged-out access tokens. Triggers keep it and notify `lxgate_auth`, so
-- every writer (any replica, the `lxgate` shell commands) reaches every
-- replica's in-memory view of its callers at once (src/auth/view.rs); the
-- count is what a replica checks when it may have missed a notification.
-- A sequence rather than a row: it takes no lock, so concurrent changes to
-- different accounts never wait on (or deadlock over) one shared row.
CREATE SEQUENCE auth_epoch;

CREATE FUNCTION lxgate_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('auth_epoch');
    PERFORM pg_notify('lxgate_auth', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER auth_epoch AFTER UPDATE OF role, disabled, token_version, password_hash OR DELETE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION lxgate_auth_changed();
CREATE TRIGGER auth_epoch AFTER INSERT OR UPDATE OR DELETE ON project_roles
    FOR EACH STATEMENT EXECUTE FUNCTION lxgate_auth_changed();
CREATE TRIGGER auth_epoch AFTER DELETE ON teams
    FOR EACH STATEMENT EXECUTE FUNCTION lxgate_auth_changed();
CREATE TRIGGER auth_epoch AFTER INSERT OR UPDATE OR DELETE ON team_members
    FOR EACH STATEMENT EXECUTE FUNCTION lxgate_auth_changed();
CREATE TRIGGER auth_epoch AFTER INSERT OR UPDATE OR DELETE ON team_roles
    FOR EACH STATEMENT EXECUTE FUNCTION lxgate_auth_changed();
CREATE TRIGGER auth_epoch AFTER INSERT ON revoked_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION lxgate_auth_changed();
