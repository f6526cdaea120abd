-- Storage pools (`default` always exists and has no row) and custom volumes
-- of the embedded backend.
CREATE TABLE embedded_storage_pools (
    name        TEXT PRIMARY KEY NOT NULL,
    driver      TEXT NOT NULL,
    description TEXT NOT NULL,
    config      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE embedded_volumes (
    pool         TEXT NOT NULL,
    project      TEXT NOT NULL,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    description  TEXT NOT NULL,
    config       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (pool, project, name)
);
