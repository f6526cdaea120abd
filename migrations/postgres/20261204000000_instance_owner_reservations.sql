-- A create in flight is recorded at once, before its operation finishes:
-- its maker sees it in an owner-only project, and per-user quotas count
-- what it will use (`reserved_*`) while the backend does not list it yet.
-- `pending` is the reservation's token until the create succeeds (NULL
-- after); a failed create removes the row it reserved.
ALTER TABLE instance_owners ADD COLUMN pending TEXT NULL;
ALTER TABLE instance_owners ADD COLUMN reserved_cpu BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instance_owners ADD COLUMN reserved_memory BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instance_owners ADD COLUMN reserved_disk BIGINT NOT NULL DEFAULT 0;
