-- Child tasks and joins: a step starts child tasks, committed with its own
-- move; the parent may wait for them (a join) and then read their results.
--
--   parent_id      the task that started this one (NULL for a task enqueued
--                  from outside); `SELECT * FROM jetpack_tasks WHERE parent_id = 42`
--                  lists the children of 42
--   awaited        how the parent's join counts this child:
--                    'wait'   a park leaves the parent waiting (fix the child,
--                             the family goes on)
--                    'fail'   a park parks the parent too, naming the child
--                    'error'  a park ends the child for the join: its error is
--                             the result the join step reads
--                    'done'   counted: the child finished, was cancelled, or
--                             parked under 'error'
--                    ('ended' for an instant, inside the statement that
--                    ends the child, until the trigger below counts it)
--                  NULL when the parent does not wait for it (a detached
--                  child), or the child belongs to an earlier join
--   children_left  on a parent in a join: the awaited children not counted
--                  yet; NULL outside a join. The parent is 'waiting' (with no
--                  wait_for) until it reaches 0, then ready for its join step.
--   result         what a finished task returned (`NextStep::finish`), as
--                  JSON; kept on awaited children until their parent's join
--                  step has run, and on every finished task that is kept
--
-- A child counted by its parent's join is kept (state 'finished', with its
-- result) until the join step moves on; then the workers' cleanup deletes it
-- like any finished task.
--
-- HOT claims: a claim writes none of these columns.
ALTER TABLE jetpack_tasks
    ADD COLUMN parent_id bigint,
    ADD COLUMN awaited text
        CONSTRAINT jetpack_tasks_awaited_known CHECK (awaited IN ('wait', 'fail', 'error', 'ended', 'done')),
    ADD COLUMN children_left integer
        CONSTRAINT jetpack_tasks_children_left_not_negative CHECK (children_left >= 0),
    ADD COLUMN result jsonb;

-- A waiting task waits for a signal or for children: a row set to waiting by
-- hand without either would wait forever. Such rows, if any, are parked first.
UPDATE jetpack_tasks
SET error = 'the task was waiting for neither a signal nor children (was state set by hand?): '
            || 'clear error to run its step'
WHERE state = 'waiting' AND wait_for IS NULL;
ALTER TABLE jetpack_tasks ADD CONSTRAINT jetpack_tasks_waiting_for_something
    CHECK (state <> 'waiting' OR wait_for IS NOT NULL OR coalesce(children_left, 0) > 0);

CREATE INDEX jetpack_tasks_children ON jetpack_tasks (parent_id) WHERE parent_id IS NOT NULL;

-- A child's end counts for its parent's join: a finish or a cancel (or a
-- delete by hand), and a park under 'error'. A worker's finish counts its
-- children in the statement that writes it, for all the children of a parent
-- in one flush at once, and sets `awaited` to 'done' itself. Any other end (a
-- cancel, a hand edit) is marked 'ended' here, before the row is written, and
-- the parent is told after the statement (below), so that a statement that
-- also changes the parent (a cancel of the whole family) does not collide
-- with it.
CREATE FUNCTION jetpack_child_ended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IN ('finished', 'cancelled') OR (NEW.state = 'parked' AND NEW.awaited = 'error') THEN
        NEW.awaited := 'ended';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER jetpack_tasks_child_ended BEFORE UPDATE OF state ON jetpack_tasks
FOR EACH ROW WHEN (OLD.awaited IN ('wait', 'fail', 'error') AND NEW.state IS DISTINCT FROM OLD.state
                   AND NEW.awaited IS NOT DISTINCT FROM OLD.awaited)
EXECUTE FUNCTION jetpack_child_ended();

-- Tells the parent: one child fewer (its join step is ready after the last),
-- or, for a child awaited under 'fail' that parked, the parent parks.
CREATE FUNCTION jetpack_tell_parent() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    child record;
    parent_state text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        child := OLD;
    ELSE
        child := NEW;
    END IF;
    IF TG_OP = 'DELETE' OR child.awaited = 'ended' THEN
        UPDATE jetpack_tasks p
        SET children_left = p.children_left - 1,
            state = CASE WHEN p.children_left = 1 AND p.state = 'waiting' THEN 'ready' ELSE p.state END,
            wakeup_at = CASE WHEN p.children_left = 1 AND p.state = 'waiting' THEN now() ELSE p.wakeup_at END,
            updated_at = now()
        WHERE p.id = child.parent_id AND p.children_left > 0
        RETURNING p.state INTO parent_state;
        -- Only the last child's end wakes the workers (a notice per child
        -- cost a third of the countdown).
        IF parent_state = 'ready' THEN
            PERFORM pg_notify('jetpack', '');
        END IF;
        IF TG_OP = 'UPDATE' THEN
            UPDATE jetpack_tasks SET awaited = 'done' WHERE id = child.id;
        END IF;
    ELSIF child.awaited = 'fail' AND child.state = 'parked' THEN
        UPDATE jetpack_tasks p
        SET error = format('child task %s (%s) parked: %s', child.id, child.kind, child.error)
        WHERE p.id = child.parent_id AND p.state = 'waiting' AND p.children_left > 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jetpack_tasks_tell_parent AFTER UPDATE OF state ON jetpack_tasks
FOR EACH ROW WHEN (NEW.parent_id IS NOT NULL AND NEW.state IS DISTINCT FROM OLD.state
                   AND (NEW.awaited = 'ended' OR (NEW.awaited = 'fail' AND NEW.state = 'parked')))
EXECUTE FUNCTION jetpack_tell_parent();

CREATE TRIGGER jetpack_tasks_child_deleted AFTER DELETE ON jetpack_tasks
FOR EACH ROW WHEN (OLD.parent_id IS NOT NULL AND OLD.awaited IN ('wait', 'fail', 'error'))
EXECUTE FUNCTION jetpack_tell_parent();

-- Resuming a parked task that still waits for children puts it back to
-- waiting for them; cancelling one ends its join.
CREATE OR REPLACE FUNCTION jetpack_state_edited() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.error IS NOT NULL AND NEW.state = OLD.state AND NEW.state IN ('ready', 'waiting') THEN
        NEW.state := 'parked';
    ELSIF OLD.state = 'parked' AND NEW.state IN ('parked', 'ready')
          AND (NEW.error IS NULL OR NEW.state = 'ready') THEN
        NEW.error := NULL;
        NEW.tried := 0;
        NEW.updated_at := now();
        IF NEW.children_left > 0 THEN
            NEW.state := 'waiting';
            NEW.wakeup_at := '9999-12-31 00:00:00+00';
        ELSE
            NEW.state := 'ready';
            IF NEW.wakeup_at IS NOT DISTINCT FROM OLD.wakeup_at THEN
                NEW.wakeup_at := now();
            END IF;
            PERFORM pg_notify('jetpack', '');
        END IF;
    ELSIF NEW.state = 'cancelled' AND OLD.state <> 'cancelled' THEN
        NEW.finished_at := coalesce(NEW.finished_at, now());
        NEW.fence := least(OLD.fence, 9223372036854775806) + 1;
        NEW.locked_by := NULL;
        NEW.lease_until := NULL;
        NEW.children_left := NULL;
        NEW.updated_at := now();
        IF OLD.locked_by IS NOT NULL THEN
            PERFORM pg_notify('jetpack', 'cancel ' || OLD.id);
        END IF;
    ELSIF NEW.state = 'finished' AND NEW.finished_at IS NULL THEN
        NEW.finished_at := now();
    END IF;
    RETURN NEW;
END
$$;

-- Cancel from SQL, optionally with every descendant (children, their
-- children, ...) that has not ended: e.g.
-- `SELECT jetpack_cancel(42, 'the customer withdrew', true)`. Returns the
-- state of task `task_id` afterwards, as before.
DROP FUNCTION jetpack_cancel(bigint, text);
CREATE FUNCTION jetpack_cancel(task_id bigint, reason text DEFAULT 'cancelled',
                               with_descendants boolean DEFAULT false) RETURNS text
LANGUAGE sql AS $$
    WITH RECURSIVE family AS (
        SELECT task_id AS id
        UNION
        SELECT c.id FROM jetpack_tasks c JOIN family f ON c.parent_id = f.id
        WHERE with_descendants
    ),
    cancelled AS (
        UPDATE jetpack_tasks t
        SET state = 'cancelled',
            error = CASE WHEN t.id = task_id THEN reason
                         ELSE format('an ancestor (task %s) was cancelled: %s', task_id, reason) END
        WHERE t.id IN (SELECT id FROM family) AND t.state IN ('ready', 'waiting', 'parked')
        RETURNING t.id, t.state
    )
    SELECT state FROM cancelled WHERE id = task_id
    UNION ALL
    -- Read as the statement began: a task that was still live then has ended
    -- meanwhile (a step finished it while the update waited for its row).
    SELECT CASE WHEN state IN ('cancelled', 'finished') THEN state END
    FROM jetpack_tasks WHERE id = task_id AND NOT EXISTS (SELECT FROM cancelled WHERE id = task_id)
$$;

-- A join that begins retires the children an earlier join of the same task
-- counted (kept while finished tasks are kept): the new join step reads only
-- its own children's results.
CREATE FUNCTION jetpack_join_began() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE jetpack_tasks SET awaited = NULL WHERE parent_id = NEW.id AND awaited = 'done';
    RETURN NULL;
END
$$;

-- (`UPDATE OF state`: a join sets it, and a move to a next step, which sets
-- `children_left` to NULL, does not, so moves do not even test this trigger.)
CREATE TRIGGER jetpack_tasks_join_began AFTER UPDATE OF state ON jetpack_tasks
FOR EACH ROW WHEN (OLD.children_left IS NULL AND NEW.children_left IS NOT NULL)
EXECUTE FUNCTION jetpack_join_began();
