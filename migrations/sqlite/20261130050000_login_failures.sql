-- Failed logins (and password changes) per username and client IP, shared
-- by every replica: a lockout holds whichever replica a request reaches.
CREATE TABLE login_failures (
    username     TEXT NOT NULL,
    client_ip    TEXT NOT NULL,
    failures     BIGINT NOT NULL,
    last_at      BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    PRIMARY KEY (username, client_ip)
);
