-- The embedded backend's inventory: what lxgate itself runs on this host.
-- Files live under DATA_DIR; these rows say what exists and in which project,
-- so instances are found again after lxgate restarts.
CREATE TABLE embedded_images (
    project      TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    image_type   TEXT NOT NULL,
    architecture TEXT NOT NULL,
    size         BIGINT NOT NULL,
    filename     TEXT NOT NULL,
    properties   TEXT NOT NULL,
    public       BIGINT NOT NULL,
    created_at   TEXT NOT NULL,
    uploaded_at  TEXT NOT NULL,
    PRIMARY KEY (project, fingerprint)
);

CREATE TABLE embedded_image_aliases (
    project     TEXT NOT NULL,
    name        TEXT NOT NULL,
    target      TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (project, name)
);

CREATE TABLE embedded_instances (
    project       TEXT NOT NULL,
    name          TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    description   TEXT NOT NULL,
    architecture  TEXT NOT NULL,
    config        TEXT NOT NULL,
    devices       TEXT NOT NULL,
    profiles      TEXT NOT NULL,
    ephemeral     BIGINT NOT NULL,
    image         TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT NOT NULL,
    PRIMARY KEY (project, name)
);
