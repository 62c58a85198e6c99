-- Flow control: priorities, unique keys, throttles, concurrency limits and schedules (see the PostgreSQL
-- migration of the same name). The columns are added in place (no table copy).
ALTER TABLE jetpack_tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0
    CONSTRAINT "priority must be an integer from 0 to 10"
    CHECK (priority IN (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10));
ALTER TABLE jetpack_tasks ADD COLUMN unique_key TEXT
    CONSTRAINT "unique_key must be text of 1 to 1024 bytes"
    CHECK (unique_key IS NULL
           OR (typeof(unique_key) = 'text' AND length(CAST(unique_key AS BLOB)) BETWEEN 1 AND 1024));
ALTER TABLE jetpack_tasks ADD COLUMN limit_scope TEXT
    CONSTRAINT "limit_scope must be NULL, the kind, or kind/key"
    CHECK (limit_scope IS NULL OR limit_scope = kind
           OR substr(limit_scope, 1, length(kind) + 1) = kind || '/');

-- The claim's predicate and order: ready tasks by wakeup_at less the head
-- start. A task of priority 0 is ordered by wakeup_at itself, with no date
-- arithmetic.
DROP INDEX jetpack_tasks_ready;
CREATE INDEX jetpack_tasks_ready ON jetpack_tasks (
    CASE WHEN priority = 0 THEN wakeup_at
         ELSE strftime('%Y-%m-%d %H:%M:%f', wakeup_at, -priority || ' minutes') END)
WHERE state = 'ready' AND limit_scope IS NULL;

CREATE INDEX jetpack_tasks_limited ON jetpack_tasks (limit_scope,
    CASE WHEN priority = 0 THEN wakeup_at
         ELSE strftime('%Y-%m-%d %H:%M:%f', wakeup_at, -priority || ' minutes') END)
WHERE state = 'ready' AND limit_scope IS NOT NULL;

CREATE TABLE jetpack_holders (
    task_id  INTEGER PRIMARY KEY,
    fence    INTEGER NOT NULL,
    scope    TEXT NOT NULL
);
CREATE INDEX jetpack_holders_scope ON jetpack_holders (scope);

CREATE UNIQUE INDEX jetpack_tasks_unique_key ON jetpack_tasks (unique_key)
WHERE unique_key IS NOT NULL AND state IN ('ready', 'waiting', 'parked');

CREATE TABLE jetpack_throttles (
    key      TEXT PRIMARY KEY
             CHECK (typeof(key) = 'text' AND length(CAST(key AS BLOB)) BETWEEN 1 AND 1024),
    task_id  INTEGER,
    until    TEXT NOT NULL
);

-- Schedules (cron), as on PostgreSQL; times as UTC text like wakeup_at.
CREATE TABLE jetpack_schedules (
    name       TEXT PRIMARY KEY
               CHECK (typeof(name) = 'text' AND length(CAST(name AS BLOB)) BETWEEN 1 AND 200),
    last_tick  TEXT NOT NULL
               CHECK (last_tick GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*'),
    fired_at   TEXT
);
