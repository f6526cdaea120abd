-- A WebSocket ticket opens one route (path and `?project=`) only, and
-- remembers the access token it was issued with, so logging that token out
-- ends the sockets opened with it too.
ALTER TABLE ws_tickets ADD COLUMN path TEXT NOT NULL DEFAULT '';
ALTER TABLE ws_tickets ADD COLUMN project TEXT;
ALTER TABLE ws_tickets ADD COLUMN jti TEXT;

-- Access tokens ended by logout before they expire (their `jti`), shared by
-- every replica. Rows go once the token would have expired anyway.
CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at);
