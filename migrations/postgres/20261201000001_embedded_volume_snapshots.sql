-- Snapshots of the embedded backend's custom volumes. Their data lives in
-- the pool's `custom-snapshots/<project>_<volume>/<name>` (a directory, or
-- `<name>.qcow2` for a block volume); the volume's content type is theirs.
CREATE TABLE embedded_volume_snapshots (
    pool        TEXT NOT NULL,
    project     TEXT NOT NULL,
    volume      TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    config      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    PRIMARY KEY (pool, project, volume, name)
);
