-- History: one row per transition of a task (see the PostgreSQL migration of
-- the same name). Times as UTC text like wakeup_at.
CREATE TABLE jetpack_history (
    id           INTEGER PRIMARY KEY,
    task_id      INTEGER NOT NULL,
    at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    event        TEXT NOT NULL,
    from_kind    TEXT,
    to_kind      TEXT,
    step         TEXT,
    attempt      INTEGER,
    worker       TEXT,
    duration_us  INTEGER,
    error        TEXT
);
CREATE INDEX jetpack_history_task ON jetpack_history (task_id, id);

CREATE TABLE jetpack_config (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    history    INTEGER NOT NULL DEFAULT 1 CHECK (history IN (0, 1))
);
INSERT INTO jetpack_config (singleton) VALUES (1);

-- A row inserted by hand without its kind gets it from a trigger that fires
-- after this one: its to_kind is NULL (its step is recorded).
CREATE TRIGGER jetpack_history_enqueued AFTER INSERT ON jetpack_tasks
WHEN coalesce((SELECT history FROM jetpack_config), 1)
BEGIN
    INSERT INTO jetpack_history (task_id, event, to_kind, step, error)
    VALUES (NEW.id, CASE WHEN NEW.state = 'parked' OR NEW.error IS NOT NULL THEN 'parked' ELSE 'enqueued' END,
            nullif(NEW.kind, ''), NEW.step, NEW.error);
END;

-- A change not made by an attempt's outcome (whose writes move `locked_by`).
-- The state that other triggers set after an edit of `error` (parked with an
-- error, ready again without one) is part of that edit, recorded once.
CREATE TRIGGER jetpack_history_changed AFTER UPDATE ON jetpack_tasks
WHEN OLD.locked_by IS NEW.locked_by
     AND (OLD.error IS NOT NEW.error OR OLD.step IS NOT NEW.step
          OR (OLD.state IS NOT NEW.state
              AND NOT (NEW.state = 'parked' AND NEW.error IS NOT NULL)
              AND NOT (OLD.state = 'parked' AND NEW.error IS NULL)))
     AND coalesce((SELECT history FROM jetpack_config), 1)
BEGIN
    INSERT INTO jetpack_history (task_id, event, from_kind, to_kind, step, error)
    VALUES (NEW.id,
            CASE WHEN NEW.state = 'cancelled' AND OLD.state <> 'cancelled' THEN 'cancelled'
                 WHEN NEW.state = 'finished' AND OLD.state <> 'finished' THEN 'finished'
                 WHEN OLD.error IS NOT NULL AND NEW.error IS NULL THEN 'resumed'
                 WHEN NEW.error IS NOT NULL AND OLD.error IS NULL THEN 'parked'
                 WHEN OLD.state = 'waiting' AND NEW.state = 'ready' THEN 'woken'
                 ELSE 'edited' END,
            OLD.kind, NEW.kind,
            CASE WHEN NEW.step IS NOT OLD.step THEN NEW.step END,
            NEW.error);
END;

CREATE TRIGGER jetpack_history_deleted AFTER DELETE ON jetpack_tasks
WHEN OLD.locked_by IS NULL AND OLD.state NOT IN ('finished', 'cancelled')
     AND coalesce((SELECT history FROM jetpack_config), 1)
BEGIN
    INSERT INTO jetpack_history (task_id, event, from_kind, step)
    VALUES (OLD.id, 'deleted', OLD.kind, OLD.step);
END;
