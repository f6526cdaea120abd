-- How an operation started through lxgate ended, as lxgate saw it: the
-- backend forgets finished operations within seconds (and all of them when
-- it restarts), and a client polling one must get its outcome, not a 404.
ALTER TABLE operations ADD COLUMN status_code BIGINT NULL;
ALTER TABLE operations ADD COLUMN err TEXT NULL;
ALTER TABLE operations ADD COLUMN finished_at BIGINT NULL;
