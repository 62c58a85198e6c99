-- An explicit lifecycle: every row says what the task is doing.
--
--   state        ready      waiting for its wakeup_at (or due), or running: running is
--                           derived from the lease (locked_by, lease_until in the
--                           future), so that a claim writes no column an index covers
--                waiting    waiting for something outside (children, a signal)
--                parked     failed for good; `error` says why. Clearing `error` (or
--                           setting state back to 'ready') resumes it
--                cancelled  stopped for good; `error` holds the reason
--                finished   done; only kept when a worker is asked to keep finished
--                           tasks (they are deleted otherwise)
--   finished_at  when the task was cancelled or finished (UTC text, like wakeup_at)
--
-- Rows that were parked (`error` set) become 'parked', all others 'ready': no
-- task changes its meaning. The columns are added in place (no table copy).
--
-- Unlike PostgreSQL, SQLite cannot check that a parked row has an error: its
-- triggers run after the row is written, so clearing `error` of a parked row
-- (which the trigger then resumes) would fail such a check. A row set to
-- 'parked' by hand without an error is simply not run; set its state to
-- 'ready' to run it.
--
-- No index may cover a column a claim writes (tried, fence, locked_by,
-- lease_until, updated_at), as on PostgreSQL.
ALTER TABLE jetpack_tasks ADD COLUMN state TEXT NOT NULL DEFAULT 'ready'
    CONSTRAINT "state must be one of ready, waiting, parked, cancelled, finished"
    CHECK (state IN ('ready', 'waiting', 'parked', 'cancelled', 'finished'));
ALTER TABLE jetpack_tasks ADD COLUMN finished_at TEXT;

UPDATE jetpack_tasks SET state = 'parked' WHERE error IS NOT NULL;

DROP INDEX jetpack_tasks_ready;
CREATE INDEX jetpack_tasks_ready ON jetpack_tasks (wakeup_at) WHERE state = 'ready';
CREATE INDEX jetpack_tasks_ended ON jetpack_tasks (finished_at)
WHERE state IN ('finished', 'cancelled');

-- Hand edits of `state` and `error` keep the two in step (see the PostgreSQL
-- migration of the same name). Jetpack's own writes change both as they should,
-- and none of these fire for them.
DROP TRIGGER jetpack_tasks_resumed;

-- Setting `error` on a ready or waiting task parks it.
CREATE TRIGGER jetpack_tasks_parked AFTER UPDATE OF error ON jetpack_tasks
WHEN NEW.error IS NOT NULL AND NEW.state = OLD.state AND NEW.state IN ('ready', 'waiting')
BEGIN
    UPDATE jetpack_tasks SET state = 'parked' WHERE id = NEW.id;
END;

-- Clearing `error` of a parked task, or setting its state to 'ready', resumes it:
-- a full retry budget, due now unless the same UPDATE set wakeup_at. A live
-- lease is kept.
CREATE TRIGGER jetpack_tasks_resumed AFTER UPDATE OF error, state ON jetpack_tasks
WHEN OLD.state = 'parked' AND NEW.state IN ('parked', 'ready')
     AND (NEW.error IS NULL OR NEW.state = 'ready')
BEGIN
    UPDATE jetpack_tasks
    SET state = 'ready', error = NULL, tried = 0,
        wakeup_at = CASE WHEN NEW.wakeup_at IS OLD.wakeup_at
                         THEN strftime('%Y-%m-%d %H:%M:%f', 'now') ELSE NEW.wakeup_at END,
        updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
    WHERE id = NEW.id;
END;

-- Setting state to 'cancelled' stops the task: its lease is released and its
-- fence raised, so that a running attempt can no longer write its outcome (its
-- worker's heartbeat finds out and tells the step).
CREATE TRIGGER jetpack_tasks_cancelled AFTER UPDATE OF state ON jetpack_tasks
WHEN NEW.state = 'cancelled' AND OLD.state <> 'cancelled'
BEGIN
    UPDATE jetpack_tasks
    SET finished_at = coalesce(NEW.finished_at, strftime('%Y-%m-%d %H:%M:%f', 'now')),
        fence = CAST(min(OLD.fence, 9007199254740990) AS INTEGER) + 1,
        locked_by = NULL, lease_until = NULL,
        updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
    WHERE id = NEW.id;
END;

-- A row inserted by hand (without `kind`) with an error is parked. The trigger
-- that derives `kind` for such rows does it, so that Jetpack's own inserts pay
-- for no second trigger; a row inserted by hand with both `kind` and `error` is
-- left 'ready', and claims skip it (they take only rows without an error).
DROP TRIGGER jetpack_tasks_kind_insert;
CREATE TRIGGER jetpack_tasks_kind_insert AFTER INSERT ON jetpack_tasks
WHEN NEW.kind = ''
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
    ),
    state = CASE WHEN NEW.error IS NOT NULL AND NEW.state IN ('ready', 'waiting')
                 THEN 'parked' ELSE NEW.state END
    WHERE id = NEW.id;
END;

-- A task set to 'finished' by hand gets its finish time.
CREATE TRIGGER jetpack_tasks_finished AFTER UPDATE OF state ON jetpack_tasks
WHEN NEW.state = 'finished' AND NEW.finished_at IS NULL
BEGIN
    UPDATE jetpack_tasks SET finished_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
    WHERE id = NEW.id;
END;
