-- Where an embedded instance is in its life, so that a restart after lxgate
-- was killed can finish what was under way: `creating` from the moment its
-- name is claimed until its files are made, `deleting` from the moment its
-- files start to go, `ready` otherwise. Rows from before are ready.
ALTER TABLE embedded_instances ADD COLUMN phase TEXT NOT NULL DEFAULT 'ready';
