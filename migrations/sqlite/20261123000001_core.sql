-- Accounts, refresh tokens, project grants, WebSocket tickets and the audit log.
-- Timestamps are Unix seconds (BIGINT) so both dialects share one set of queries.

CREATE TABLE users (
    id             TEXT PRIMARY KEY NOT NULL,
    username       TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    role           TEXT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    disabled       BIGINT NOT NULL DEFAULT 0,
    token_version  BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    last_login_at  BIGINT NULL
);

CREATE TABLE refresh_tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id    TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT NULL,
    replaced_by  TEXT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE project_roles (
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    project     TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, project)
);

CREATE TABLE ws_tickets (
    ticket_hash  TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at   BIGINT NOT NULL
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    username    TEXT NULL,
    client_ip   TEXT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    route       TEXT NULL,
    project     TEXT NULL,
    status      BIGINT NOT NULL,
    request_id  TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_username ON audit_log (username, at);
