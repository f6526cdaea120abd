-- Projects of the embedded backend (`default` always exists and has no row).
CREATE TABLE embedded_projects (
    name        TEXT PRIMARY KEY NOT NULL,
    description TEXT NOT NULL,
    config      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
