-- Jetpack keeps all state of one task in one row of `jetpack_tasks`; the columns
-- mean what they mean on PostgreSQL (see migrations/postgres). Times are UTC text,
-- 'YYYY-MM-DD HH:MM:SS.SSS', readable in the sqlite3 shell and ordered as text.

CREATE TABLE jetpack_tasks (
    -- AUTOINCREMENT: the id of a finished (deleted) task is never given to another.
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    step       TEXT NOT NULL CHECK (json_valid(step)),
    wakeup_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    tried      INTEGER NOT NULL DEFAULT 0,
    error      TEXT,
    locked_by  TEXT,
    fence      INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    -- "Machine.Step", kept by the triggers below (a generated column cannot read
    -- JSON keys in SQLite): workers claim only the kinds they know.
    kind       TEXT NOT NULL DEFAULT ''
);

-- Exactly the claim query's predicate and order.
CREATE INDEX jetpack_tasks_ready ON jetpack_tasks (wakeup_at) WHERE error IS NULL;

CREATE TRIGGER jetpack_tasks_kind_insert AFTER INSERT ON jetpack_tasks
BEGIN
    UPDATE jetpack_tasks SET kind = (
        SELECT CASE
            WHEN json_type(NEW.step) <> 'object'
              OR (SELECT count(*) FROM json_each(NEW.step)) <> 1 THEN ''
            ELSE (
                SELECT m.key || '.' || CASE
                    WHEN m.type = 'text' THEN m.value
                    WHEN m.type = 'object' AND (SELECT count(*) FROM json_each(m.value)) = 1
                        THEN (SELECT s.key FROM json_each(m.value) s)
                    ELSE ''
                END
                FROM json_each(NEW.step) m
            )
        END
    ) WHERE id = NEW.id;
END;

CREATE TRIGGER jetpack_tasks_kind_update AFTER UPDATE OF step ON jetpack_tasks
BEGIN
    UPDATE jetpack_tasks SET kind = (
        SELECT CASE
            WHEN json_type(NEW.step) <> 'object'
              OR (SELECT count(*) FROM json_each(NEW.step)) <> 1 THEN ''
            ELSE (
                SELECT m.key || '.' || CASE
                    WHEN m.type = 'text' THEN m.value
                    WHEN m.type = 'object' AND (SELECT count(*) FROM json_each(m.value)) = 1
                        THEN (SELECT s.key FROM json_each(m.value) s)
                    ELSE ''
                END
                FROM json_each(NEW.step) m
            )
        END
    ) WHERE id = NEW.id;
END;

-- Clearing `error` by hand resumes the task: a full retry budget again, due now
-- (unless the same UPDATE sets wakeup_at).
CREATE TRIGGER jetpack_tasks_resumed AFTER UPDATE OF error ON jetpack_tasks
WHEN OLD.error IS NOT NULL AND NEW.error IS NULL
BEGIN
    UPDATE jetpack_tasks
    SET tried = 0,
        locked_by = NULL,
        wakeup_at = CASE WHEN NEW.wakeup_at IS OLD.wakeup_at
                         THEN strftime('%Y-%m-%d %H:%M:%f', 'now') ELSE NEW.wakeup_at END,
        updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
    WHERE id = NEW.id;
END;
