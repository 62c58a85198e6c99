-- The machines workers run, recorded by each worker at start (the last one
-- started wins): their steps, edges and step options as JSON
-- (`Graph::to_json`), so that SQL and tools see the graphs without the binary.
CREATE TABLE jetpack_machines (
    name        text PRIMARY KEY,
    graph       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
