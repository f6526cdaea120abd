-- When (the `iat` of) the provider's token a single sign-on user's roles
-- were last synced from was issued: an older token never syncs them back.
ALTER TABLE users ADD COLUMN oidc_synced_at BIGINT NULL;
