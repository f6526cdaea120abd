-- Personal access tokens: long-lived credentials for scripts and CI, each
-- capped (projects, role, read-only) below what its owner may do. Only the
-- SHA-256 of the secret is kept; `prefix` is its first characters, to
-- recognise a token in a list. Deleting a user deletes its tokens.
CREATE TABLE personal_access_tokens (
    id            TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    -- NULL: every project of the owner; else a JSON array of project names.
    projects      TEXT NULL,
    role_cap      TEXT NULL CHECK (role_cap IN ('viewer', 'operator', 'admin')),
    read_only     BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    last_used_at  BIGINT NULL,
    last_used_ip  TEXT NULL
);
CREATE INDEX personal_access_tokens_user ON personal_access_tokens (user_id);
CREATE INDEX personal_access_tokens_expires_at ON personal_access_tokens (expires_at);

-- A WebSocket ticket asked for with a personal access token carries its id:
-- redeeming it applies the token's caps, and revoking the token ends it.
ALTER TABLE ws_tickets ADD COLUMN pat_id TEXT NULL;

-- The personal access token a request was made with (`auth_method` = `pat`).
ALTER TABLE audit_log ADD COLUMN token_id TEXT NULL;
