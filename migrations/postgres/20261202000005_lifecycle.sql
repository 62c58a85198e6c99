-- An explicit lifecycle: every row says what the task is doing.
--
--   state        ready      waiting for its wakeup_at (or due), or running: running is
--                           derived from the lease (locked_by, lease_until > now()), so
--                           that a claim writes no column an index covers (below)
--                waiting    waiting for something outside (children, a signal)
--                parked     failed for good; `error` says why. Clearing `error` (or
--                           setting state back to 'ready') resumes it
--                cancelled  stopped for good; `error` holds the reason
--                finished   done; only kept when a worker is asked to keep finished
--                           tasks (they are deleted otherwise)
--   finished_at  when the task was cancelled or finished
--
-- Rows that were parked (`error` set) become 'parked', all others 'ready': no
-- task changes its meaning.
--
-- HOT claims: no index may cover a column a claim writes (tried, fence,
-- locked_by, lease_until, updated_at), and a column in an index's WHERE counts
-- as covered. A claim writes none of state, wakeup_at, finished_at, so its
-- update stays HOT (store::tests::claims_are_hot_updates checks it).
ALTER TABLE jetpack_tasks
    ADD COLUMN state text NOT NULL DEFAULT 'ready'
        CONSTRAINT jetpack_tasks_state_known
        CHECK (state IN ('ready', 'waiting', 'parked', 'cancelled', 'finished')),
    ADD COLUMN finished_at timestamptz
        CONSTRAINT jetpack_tasks_finished_at_in_years_1_to_9999
        CHECK (finished_at >= '0001-01-01 00:00:00+00' AND finished_at < '10000-01-01 00:00:00+00');

UPDATE jetpack_tasks SET state = 'parked' WHERE error IS NOT NULL;

ALTER TABLE jetpack_tasks
    ADD CONSTRAINT jetpack_tasks_parked_with_error CHECK (state <> 'parked' OR error IS NOT NULL);

-- The claim's predicate and order: ready tasks by wakeup_at.
DROP INDEX jetpack_tasks_ready;
CREATE INDEX jetpack_tasks_ready ON jetpack_tasks (wakeup_at) WHERE state = 'ready';

-- The workers' cleanup of kept tasks, oldest first.
CREATE INDEX jetpack_tasks_ended ON jetpack_tasks (finished_at)
WHERE state IN ('finished', 'cancelled');

-- Hand edits of `state` and `error` keep the two in step, so that either may be
-- written by hand:
--   * setting `error` on a ready or waiting task parks it;
--   * clearing `error` of a parked task (or setting its state to 'ready') resumes
--     it: a full retry budget again, due now unless the same UPDATE sets
--     wakeup_at, and the workers are woken. A live lease is kept (a person may
--     park a running task and resume it while its attempt still runs);
--   * setting state to 'cancelled' stops the task: its lease is released and its
--     fence raised, so that a running attempt can no longer write its outcome,
--     and the workers are told (`cancel <id>`), so that the step hears of it.
-- Jetpack's own writes of a parked or finished state change both columns as
-- they should and pass through unchanged.
CREATE FUNCTION jetpack_state_edited() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.error IS NOT NULL AND NEW.state = OLD.state AND NEW.state IN ('ready', 'waiting') THEN
        NEW.state := 'parked';
    ELSIF OLD.state = 'parked' AND NEW.state IN ('parked', 'ready')
          AND (NEW.error IS NULL OR NEW.state = 'ready') THEN
        NEW.state := 'ready';
        NEW.error := NULL;
        NEW.tried := 0;
        IF NEW.wakeup_at IS NOT DISTINCT FROM OLD.wakeup_at THEN
            NEW.wakeup_at := now();
        END IF;
        NEW.updated_at := now();
        PERFORM pg_notify('jetpack', '');
    ELSIF NEW.state = 'cancelled' AND OLD.state <> 'cancelled' THEN
        NEW.finished_at := coalesce(NEW.finished_at, now());
        NEW.fence := least(OLD.fence, 9223372036854775806) + 1;
        NEW.locked_by := NULL;
        NEW.lease_until := NULL;
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

DROP TRIGGER jetpack_tasks_resumed ON jetpack_tasks;
DROP FUNCTION jetpack_resume();
CREATE TRIGGER jetpack_tasks_state_edited BEFORE UPDATE OF state, error ON jetpack_tasks
FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state OR NEW.error IS DISTINCT FROM OLD.error)
EXECUTE FUNCTION jetpack_state_edited();

-- A row inserted by hand with an error is parked.
CREATE FUNCTION jetpack_inserted_with_error() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.state := 'parked';
    RETURN NEW;
END
$$;

CREATE TRIGGER jetpack_tasks_inserted_with_error BEFORE INSERT ON jetpack_tasks
FOR EACH ROW WHEN (NEW.error IS NOT NULL AND NEW.state IN ('ready', 'waiting'))
EXECUTE FUNCTION jetpack_inserted_with_error();

-- Cancel from SQL, e.g. `SELECT jetpack_cancel(42, 'the customer withdrew')`:
-- the state the task is in afterwards ('cancelled', or 'finished' when it had
-- finished and is kept), or NULL when there is no such task (it never existed,
-- or it finished and was deleted). Cancelling a cancelled task changes nothing.
-- A plain `UPDATE jetpack_tasks SET state = 'cancelled', error = '..'` does the
-- same.
CREATE FUNCTION jetpack_cancel(task_id bigint, reason text DEFAULT 'cancelled') RETURNS text
LANGUAGE sql AS $$
    WITH cancelled AS (
        UPDATE jetpack_tasks SET state = 'cancelled', error = reason
        WHERE id = task_id AND state IN ('ready', 'waiting', 'parked')
        RETURNING state
    )
    SELECT state FROM cancelled
    UNION ALL
    -- Read as the statement began: a task that was still live then has ended
    -- meanwhile (a step finished it while the update waited for its row).
    SELECT CASE WHEN state IN ('cancelled', 'finished') THEN state END
    FROM jetpack_tasks WHERE id = task_id AND NOT EXISTS (SELECT FROM cancelled)
$$;
