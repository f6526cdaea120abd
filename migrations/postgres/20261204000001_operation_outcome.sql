-- How an operation started through lxgate ended, as lxgate saw it: the
-- backend forgets finished operations within seconds (and all of them when
-- it restarts), and a client polling one must get its outcome, not a 404.
-- Rows from before are marked finished with no outcome: not known (404).
ALTER TABLE operations ADD COLUMN status_code BIGINT NULL;
ALTER TABLE operations ADD COLUMN err TEXT NULL;
ALTER TABLE operations ADD COLUMN finished_at BIGINT NULL;
ALTER TABLE operations ADD COLUMN exit_code BIGINT NULL;
UPDATE operations SET finished_at = created_at;
-- The janitor forgets records by age.
CREATE INDEX operations_created_at ON operations (created_at);
