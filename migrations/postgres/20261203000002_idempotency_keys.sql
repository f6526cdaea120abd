-- Idempotency-Key: a POST that starts an operation, retried with the same
-- key and the same request within 24 h, answers what the first one did
-- (its operation reference) instead of doing the work twice. Keys are per
-- user. `locked_until` is set while the first request runs (a replica that
-- dies mid-request frees its keys when it passes); `status` once it answered.
CREATE TABLE idempotency_keys (
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    idem_key      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    locked_until  BIGINT NULL,
    status        BIGINT NULL,
    location      TEXT NULL,
    body          TEXT NULL,
    PRIMARY KEY (user_id, idem_key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
