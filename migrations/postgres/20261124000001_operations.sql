-- Who started each backend operation, so listing, cancelling and auditing
-- can be authorized by project and owner.
CREATE TABLE operations (
    id          TEXT PRIMARY KEY NOT NULL,
    project     TEXT NOT NULL,
    user_id     TEXT NULL REFERENCES users (id) ON DELETE SET NULL,
    username    TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX operations_project ON operations (project, created_at);
