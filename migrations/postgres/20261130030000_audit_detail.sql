-- What a change set, where lxgate records it (a project's instance policy:
-- its allow lists and whether the backend restricts it).
ALTER TABLE audit_log ADD COLUMN detail TEXT NULL;
