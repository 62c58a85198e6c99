-- The machines workers run (see the PostgreSQL migration of the same name).
CREATE TABLE jetpack_machines (
    name        TEXT PRIMARY KEY,
    graph       TEXT NOT NULL CHECK (json_valid(graph)),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
