-- Containers are unprivileged (a user-namespace id map) unless created with
-- security.privileged=true. Containers made before that change ran with the
-- host's ids and keep doing so: existing rows are privileged. VMs have no
-- such notion.
ALTER TABLE embedded_instances ADD COLUMN privileged BIGINT NOT NULL DEFAULT 1;
UPDATE embedded_instances SET privileged = 0 WHERE instance_type = 'virtual-machine';
