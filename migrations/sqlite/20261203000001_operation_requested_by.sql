-- How the user who started an operation authenticated (`bearer`, `pat`,
-- `ticket`), and with which personal access token: operations and their
-- events show it as `requested_by`.
ALTER TABLE operations ADD COLUMN auth_method TEXT NULL;
ALTER TABLE operations ADD COLUMN token_id TEXT NULL;
