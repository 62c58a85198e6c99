-- Flow control: priorities, unique keys and throttles (see the PostgreSQL
-- migration of the same name). The columns are added in place (no table copy).
ALTER TABLE jetpack_tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0
    CONSTRAINT "priority must be an integer from 0 to 10"
    CHECK (priority IN (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10));
ALTER TABLE jetpack_tasks ADD COLUMN unique_key TEXT
    CONSTRAINT "unique_key must be text of 1 to 1024 bytes"
    CHECK (unique_key IS NULL
           OR (typeof(unique_key) = 'text' AND length(CAST(unique_key AS BLOB)) BETWEEN 1 AND 1024));

-- The claim's predicate and order: ready tasks by wakeup_at less the head
-- start. A task of priority 0 is ordered by wakeup_at itself, with no date
-- arithmetic.
DROP INDEX jetpack_tasks_ready;
CREATE INDEX jetpack_tasks_ready ON jetpack_tasks (
    CASE WHEN priority = 0 THEN wakeup_at
         ELSE strftime('%Y-%m-%d %H:%M:%f', wakeup_at, -priority || ' minutes') END)
WHERE state = 'ready';

CREATE UNIQUE INDEX jetpack_tasks_unique_key ON jetpack_tasks (unique_key)
WHERE unique_key IS NOT NULL AND state IN ('ready', 'waiting', 'parked');

CREATE TABLE jetpack_throttles (
    key      TEXT PRIMARY KEY
             CHECK (typeof(key) = 'text' AND length(CAST(key AS BLOB)) BETWEEN 1 AND 1024),
    task_id  INTEGER,
    until    TEXT NOT NULL
);
