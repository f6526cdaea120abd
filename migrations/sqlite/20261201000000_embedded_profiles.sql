-- Profiles of the embedded backend, per project. A project's `default`
-- profile has a row only once it was changed (until then it is the built-in
-- one: the root disk); instances name their profiles in
-- embedded_instances.profiles, in the order they apply.
CREATE TABLE embedded_profiles (
    project     TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    config      TEXT NOT NULL,
    devices     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (project, name)
);
