-- Who made each instance through lxgate (a create or a copy): per-user
-- quotas count a user's own instances. Kept by name; a rename moves it, a
-- create under the same name takes it over.
CREATE TABLE instance_owners (
    project     TEXT NOT NULL,
    name        TEXT NOT NULL,
    user_id     TEXT NULL REFERENCES users (id) ON DELETE SET NULL,
    username    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (project, name)
);
CREATE INDEX instance_owners_user ON instance_owners (user_id);
