-- Rate limits: one token bucket per scope (see the PostgreSQL migration of the
-- same name); times as UTC text like wakeup_at.
CREATE TABLE jetpack_rates (
    scope        TEXT PRIMARY KEY,
    tokens       REAL NOT NULL CHECK (typeof(tokens) = 'real' AND tokens >= 0 AND tokens < 1e300),
    rate         REAL NOT NULL CHECK (typeof(rate) = 'real' AND rate > 0 AND rate < 1e300),
    refilled_at  TEXT NOT NULL
                 CHECK (refilled_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*')
);
