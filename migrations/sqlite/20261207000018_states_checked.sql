-- Rows written by hand that SQLite accepted and that then stalled for good,
-- now refused as PostgreSQL refuses them (its checks jetpack_tasks_parked_with_error,
-- jetpack_tasks_waiting_for_something and jetpack_tasks_children_left_not_negative):
--
--   * state 'parked' without an `error`: the documented resume (clear `error`)
--     had nothing to clear;
--   * state 'waiting' with neither a signal (`wait_for`) nor children left:
--     nothing could ever wake it;
--   * a negative `children_left`: the last child's end counts down only from 1,
--     so the parent waited forever.
--
-- SQLite cannot add a check to a table without copying it, and a check would
-- refuse a legitimate edit anyway: clearing `error` of a parked task writes
-- (parked, no error) for an instant, until the resume trigger makes it ready.
-- So these are BEFORE triggers, which see the row about to be written and can
-- tell that edit (the task was parked already) from a park without a reason.
-- (A row inserted with an error is parked, as on PostgreSQL.) Jetpack's own
-- writes never meet them. `UPDATE OF` keeps them away from the
-- claim (which writes none of these columns).
-- Rows already written so are parked first, saying what was wrong, so
-- that no task is lost: clearing `error` resumes each (a parent again waits
-- for the children it still has). Negative counts are first set to the
-- awaited children that have not ended.
UPDATE jetpack_tasks
SET children_left = (SELECT count(*) FROM jetpack_tasks c
                     WHERE c.parent_id = jetpack_tasks.id AND c.awaited IN ('wait', 'fail', 'error')),
    error = 'children_left was ' || children_left || ' (set by hand?); it is now the count of awaited children that have not ended: clear error to go on'
WHERE children_left < 0;
UPDATE jetpack_tasks
SET error = 'the task was waiting for neither a signal nor children (was state set by hand?): clear error to run its step'
WHERE state = 'waiting' AND wait_for IS NULL AND NOT coalesce(children_left, 0) > 0 AND error IS NULL;
UPDATE jetpack_tasks
SET error = 'the task was parked without an error (was state set by hand?): clear error to run its step'
WHERE state = 'parked' AND error IS NULL;

CREATE TRIGGER jetpack_tasks_states_checked_insert BEFORE INSERT ON jetpack_tasks
WHEN (NEW.state = 'parked' AND NEW.error IS NULL)
  OR (NEW.state = 'waiting' AND NEW.wait_for IS NULL AND NOT coalesce(NEW.children_left, 0) > 0
      AND NEW.error IS NULL)
  OR NEW.children_left < 0
BEGIN
    SELECT RAISE(ABORT, 'children_left must not be negative (jetpack_tasks_children_left_not_negative)')
    WHERE NEW.children_left < 0;
    SELECT RAISE(ABORT, 'a parked task needs an error saying why (jetpack_tasks_parked_with_error): set error too, or insert it ready')
    WHERE NEW.state = 'parked' AND NEW.error IS NULL;
    SELECT RAISE(ABORT, 'a waiting task waits for a signal (wait_for) or for children (children_left > 0) (jetpack_tasks_waiting_for_something): insert it ready to run its step')
    WHERE NEW.state = 'waiting' AND NEW.wait_for IS NULL AND NOT coalesce(NEW.children_left, 0) > 0
      AND NEW.error IS NULL;
END;

CREATE TRIGGER jetpack_tasks_states_checked BEFORE UPDATE OF state, wait_for, children_left ON jetpack_tasks
WHEN (NEW.state = 'parked' AND NEW.error IS NULL AND OLD.state <> 'parked')
  OR (NEW.state = 'waiting' AND NEW.wait_for IS NULL AND NOT coalesce(NEW.children_left, 0) > 0)
  OR NEW.children_left < 0
BEGIN
    SELECT RAISE(ABORT, 'children_left must not be negative (jetpack_tasks_children_left_not_negative)')
    WHERE NEW.children_left < 0;
    SELECT RAISE(ABORT, 'a parked task needs an error saying why (jetpack_tasks_parked_with_error): set error instead, which parks it')
    WHERE NEW.state = 'parked' AND NEW.error IS NULL AND OLD.state <> 'parked';
    SELECT RAISE(ABORT, 'a waiting task waits for a signal (wait_for) or for children (children_left > 0) (jetpack_tasks_waiting_for_something): set state to ready to run its step')
    WHERE NEW.state = 'waiting' AND NEW.wait_for IS NULL AND NOT coalesce(NEW.children_left, 0) > 0;
END;
