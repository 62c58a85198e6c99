-- Child tasks and joins (see the PostgreSQL migration of the same name for
-- what each column means). SQLite cannot add a check to an existing table
-- without copying it, so `awaited` and `children_left` are checked by the
-- triggers' use only: a value written by hand outside them is ignored.
ALTER TABLE jetpack_tasks ADD COLUMN parent_id INTEGER;
ALTER TABLE jetpack_tasks ADD COLUMN awaited TEXT;
ALTER TABLE jetpack_tasks ADD COLUMN children_left INTEGER;
ALTER TABLE jetpack_tasks ADD COLUMN result TEXT;

CREATE INDEX jetpack_tasks_children ON jetpack_tasks (parent_id) WHERE parent_id IS NOT NULL;

-- A child's end counts for its parent's join: a finish or a cancel, or a park
-- under 'error'. The parent is ready for its join step after the last one.
CREATE TRIGGER jetpack_tasks_child_ended AFTER UPDATE OF state ON jetpack_tasks
WHEN OLD.awaited IN ('wait', 'fail', 'error') AND NEW.state IS NOT OLD.state
     AND (NEW.state IN ('finished', 'cancelled') OR (NEW.state = 'parked' AND OLD.awaited = 'error'))
BEGIN
    UPDATE jetpack_tasks SET awaited = 'done' WHERE id = NEW.id;
    UPDATE jetpack_tasks
    SET children_left = children_left - 1,
        state = CASE WHEN children_left = 1 AND state = 'waiting' THEN 'ready' ELSE state END,
        wakeup_at = CASE WHEN children_left = 1 AND state = 'waiting'
                         THEN strftime('%Y-%m-%d %H:%M:%f', 'now') ELSE wakeup_at END,
        updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
    WHERE id = NEW.parent_id AND children_left > 0;
END;

-- A live awaited child deleted by hand counts as ended.
CREATE TRIGGER jetpack_tasks_child_deleted AFTER DELETE ON jetpack_tasks
WHEN OLD.parent_id IS NOT NULL AND OLD.awaited IN ('wait', 'fail', 'error')
BEGIN
    UPDATE jetpack_tasks
    SET children_left = children_left - 1,
        state = CASE WHEN children_left = 1 AND state = 'waiting' THEN 'ready' ELSE state END,
        wakeup_at = CASE WHEN children_left = 1 AND state = 'waiting'
                         THEN strftime('%Y-%m-%d %H:%M:%f', 'now') ELSE wakeup_at END,
        updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
    WHERE id = OLD.parent_id AND children_left > 0;
END;

-- A child awaited under 'fail' that parks parks its waiting parent.
CREATE TRIGGER jetpack_tasks_child_failed AFTER UPDATE OF state ON jetpack_tasks
WHEN OLD.awaited = 'fail' AND NEW.state = 'parked' AND OLD.state <> 'parked'
BEGIN
    UPDATE jetpack_tasks
    SET error = 'child task ' || NEW.id || ' (' || NEW.kind || ') parked: ' || NEW.error
    WHERE id = NEW.parent_id AND state = 'waiting' AND children_left > 0;
END;

-- Resuming a parked task that still waits for children puts it back to
-- waiting for them.
DROP TRIGGER jetpack_tasks_resumed;
CREATE TRIGGER jetpack_tasks_resumed AFTER UPDATE OF error, state ON jetpack_tasks
WHEN OLD.state = 'parked' AND NEW.state IN ('parked', 'ready')
     AND (NEW.error IS NULL OR NEW.state = 'ready')
BEGIN
    UPDATE jetpack_tasks
    SET state = CASE WHEN children_left > 0 THEN 'waiting' ELSE 'ready' END,
        error = NULL, tried = 0,
        wakeup_at = CASE WHEN children_left > 0 THEN '9999-12-31 00:00:00.000'
                         WHEN NEW.wakeup_at IS OLD.wakeup_at
                         THEN strftime('%Y-%m-%d %H:%M:%f', 'now') ELSE NEW.wakeup_at END,
        updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
    WHERE id = NEW.id;
END;

-- A cancelled task's join ends with it.
DROP TRIGGER jetpack_tasks_cancelled;
CREATE TRIGGER jetpack_tasks_cancelled AFTER UPDATE OF state ON jetpack_tasks
WHEN NEW.state = 'cancelled' AND OLD.state <> 'cancelled'
BEGIN
    UPDATE jetpack_tasks
    SET finished_at = coalesce(NEW.finished_at, strftime('%Y-%m-%d %H:%M:%f', 'now')),
        fence = CAST(min(OLD.fence, 9007199254740990) AS INTEGER) + 1,
        locked_by = NULL, lease_until = NULL, children_left = NULL,
        updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
    WHERE id = NEW.id;
END;

-- A join that begins retires the children an earlier join of the same task
-- counted (kept while finished tasks are kept).
-- (`UPDATE OF state`: a join sets it, and a move to a next step, which sets
-- `children_left` to NULL, does not, so moves do not even test this trigger.)
CREATE TRIGGER jetpack_tasks_join_began AFTER UPDATE OF state ON jetpack_tasks
WHEN OLD.children_left IS NULL AND NEW.children_left IS NOT NULL
BEGIN
    UPDATE jetpack_tasks SET awaited = NULL WHERE parent_id = NEW.id AND awaited = 'done';
END;
