-- Teams: admins group users and grant the team a role in projects. A
-- member's effective role in a project is the highest of its own grant,
-- its global role and its teams' grants there (read with the user on every
-- request, so a change applies at once).
CREATE TABLE teams (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL UNIQUE,
    description  TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE TABLE team_members (
    team_id     TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user ON team_members (user_id);

CREATE TABLE team_roles (
    team_id     TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    project     TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (team_id, project)
);
CREATE INDEX team_roles_project ON team_roles (project);
