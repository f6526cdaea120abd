-- Managed networks (Linux bridges) of the embedded backend. The bridge is
-- re-created from its row when the host lost it (a reboot).
CREATE TABLE embedded_networks (
    name        TEXT PRIMARY KEY NOT NULL,
    network_type TEXT NOT NULL,
    description TEXT NOT NULL,
    config      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
