-- The token version a WebSocket ticket was issued under: a ticket dies with
-- the tokens of its user (password, role or status change) like they do.
ALTER TABLE ws_tickets ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;
