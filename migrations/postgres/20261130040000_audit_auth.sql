-- How the caller authenticated (bearer, ticket, query_token, password,
-- refresh_token; NULL: not at all), and an index for the retention purge.
ALTER TABLE audit_log ADD COLUMN auth_method TEXT NULL;
